"""The compiled programs of training: the guarded step, the initialiser and the scan over
several steps, jitted once per (process, compile key, mesh); the FLOPs of one step, as XLA
counts them; and how many steps one call runs."""

from __future__ import annotations

import collections
import functools

import jax
import numpy as np

from ardiff import parallel, threefry_cpu
from ardiff.processes.base import Process
from ardiff.train.config import TrainConfig, compile_key
from ardiff.train.step import (guarded_train_step, guarded_train_steps, init_state, make_optimizer,
                               train_step)


class ProgramCache:
  """(guarded train step, initialiser, scan of steps), jitted once per (process, config, mesh)
  and kept across calls of `train` in one Python process (the last `kept`), so that resuming a
  run, or training several seeds of one model, compiles once. The config enters by its compile
  key (`ardiff.train.config`): a field added later is in it unless it says otherwise.
  Processes are frozen dataclasses: equal ones (same class, same fields) compute the same, so
  they share programs; one that is not hashable is keyed by its identity (and held in the
  cache, so that its id is not reused while keyed)."""

  def __init__(self, kept: int):
    self.kept = kept
    self._programs = collections.OrderedDict()

  def get(self, process: Process, cfg: TrainConfig, mesh):
    try:
      hash(process)
      which = process
    except TypeError:
      which = ("id", id(process))
    key = (which, compile_key(cfg), mesh)
    if key not in self._programs:
      while len(self._programs) >= self.kept:
        self._programs.popitem(last=False)  # the oldest
      self._programs[key] = (process, *_compile(process, cfg, mesh))
    return self._programs[key][1:]


def _compile(process: Process, cfg: TrainConfig, mesh):
  tx = make_optimizer(cfg)
  repl = parallel.replicated(mesh)
  step = jax.jit(functools.partial(guarded_train_step, process, tx, cfg.ema_decay,
                                   ema_warmup=cfg.ema_warmup, grad_accum=cfg.grad_accum),
                 in_shardings=(repl, repl, parallel.batch_sharding(mesh), repl),
                 out_shardings=(repl, repl, repl), donate_argnums=0)
  init = jax.jit(functools.partial(init_state, process, tx), out_shardings=repl)
  scan = jax.jit(functools.partial(guarded_train_steps, process, tx, cfg.ema_decay,
                                   ema_warmup=cfg.ema_warmup, grad_accum=cfg.grad_accum),
                 in_shardings=(repl, repl, parallel.stacked_batch_sharding(mesh), repl),
                 out_shardings=(repl, repl, repl), donate_argnums=0)
  return step, init, scan


def steps_in_call(step: int, end: int, per_call: int, periods=(), marks=()) -> int:
  """How many steps the call starting after `step` runs: `per_call`, cut so that it ends at
  the next step where the loop must look (a multiple of one of `periods` (0: none), one of
  `marks`, or `end`)."""
  n = min(per_call, end - step)
  for period in periods:
    if period:
      n = min(n, period - step % period)
  for mark in marks:
    if mark > step:
      n = min(n, mark - step)
  return max(n, 1)


def step_flops(lowered) -> float | None:
  """FLOPs of one call of a lowered or compiled program, from XLA's cost analysis (None if the
  backend gives none)."""
  try:
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
    return None


def train_step_flops(process: Process, x: np.ndarray, y: np.ndarray, cfg: TrainConfig,
                     mesh=None) -> float | None:
  """FLOPs of one train step of `process` at cfg.batch_size (lowered, not compiled)."""
  mesh = mesh or parallel.data_mesh()
  idx = parallel.process_slice(np.arange(cfg.batch_size) % len(x))
  batch = parallel.put_global_batch({"x": x[idx], "y": y[idx]}, mesh)
  key = jax.random.key(0)
  return plain_step_flops(process, cfg, state_target(process, cfg, batch, key, mesh), batch,
                           key, mesh)


def state_target(process: Process, cfg: TrainConfig, batch, key, mesh):
  """The train state's shapes and dtypes, replicated over `mesh` (traced, nothing runs)."""
  repl = parallel.replicated(mesh)
  abstract = jax.eval_shape(functools.partial(init_state, process, make_optimizer(cfg)), batch,
                            key)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)


def plain_step_flops(process: Process, cfg: TrainConfig, target, batch, key,
                      mesh) -> float | None:
  """XLA's FLOP count of the plain train step on this global batch, from `target`
  (`state_target`). Not the guarded step's: the divergence guard is not the model's compute.
  Always the whole batch in one pass: XLA costs a loop's body once, so an accumulating step
  would read grad_accum times too few; accumulation does the same arithmetic.
  The state's shapes do not depend on the schedule's length, so this works before the number
  of steps is known; lowering only traces, nothing compiles."""
  repl = parallel.replicated(mesh)
  step = jax.jit(functools.partial(train_step, process, make_optimizer(cfg), cfg.ema_decay,
                                   ema_warmup=cfg.ema_warmup),
                 in_shardings=(repl, parallel.batch_sharding(mesh), repl),
                 out_shardings=(repl, repl))
  with threefry_cpu.jax_own_lowering():  # the count budgets and model keys were made with
    return step_flops(step.lower(target, batch, key))
