"""The training loop every process shares: data-parallel jit, AdamW, EMA, orbax checkpoints.

A run lives in a work dir: `checkpoints/` (orbax, atomic, keep N), `metrics.jsonl`. Calling
`train` again on the same dir resumes from the latest checkpoint; batches are a function of
(seed, step) alone, so an interrupted-and-resumed run equals an uninterrupted one. SIGTERM
(preemptible TPUs send it) saves a checkpoint at the next step and stops cleanly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ardiff import parallel
from ardiff.configs.validation import ConfigError
from ardiff.data.base import batch_indices
from ardiff.processes.base import Process


class Preempted(Exception):
  """Raised after SIGTERM once a checkpoint is saved: rerun the same command to resume."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Plain values (built from the `train` section of an experiment's config)."""

  # The one set of training defaults: configs' train sections are built from these
  # (`ardiff.configs.sections.train_section`).
  steps: int = 3000
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 200
  weight_decay: float = 0.0
  grad_clip: float = 1.0
  ema_decay: float = 0.999
  seed: int = 0
  log_every: int = 250
  checkpoint_every: int = 1000
  keep_checkpoints: int = 2

  def __post_init__(self):
    positive = ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints")
    for name in positive:
      if getattr(self, name) <= 0:
        raise ConfigError(f"config key 'train.{name}': must be positive, got {getattr(self, name)}")
    if self.learning_rate <= 0:
      raise ConfigError(f"config key 'train.learning_rate': must be positive, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ConfigError(f"config key 'train.warmup_steps': must be >= 0, got {self.warmup_steps}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ConfigError(f"config key 'train.ema_decay': must lie in [0, 1), got {self.ema_decay}")
    if self.grad_clip <= 0:
      raise ConfigError(f"config key 'train.grad_clip': must be positive, got {self.grad_clip}")

  @classmethod
  def from_config(cls, cfg) -> "TrainConfig":
    values = dict(cfg) if not isinstance(cfg, dict) else cfg
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in known})


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * 0.1)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(lr, weight_decay=cfg.weight_decay))


def train_step(process: Process, tx, ema_decay: float, state: TrainState, batch, key):
  def loss_fn(params):
    return process.loss(params, batch, key, train=True)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return TrainState(state.step + 1, params, ema, opt_state), metrics


def init_state(process: Process, tx, example_batch, key) -> TrainState:
  params = process.init_params(key, example_batch)
  return TrainState(jnp.int32(0), params, params, tx.init(params))


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


class _Preemption(contextlib.AbstractContextManager):
  """Turns SIGTERM into a flag the loop checks, so the run saves and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if hasattr(signal, "SIGTERM") and _in_main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def _in_main_thread() -> bool:
  import threading

  return threading.current_thread() is threading.main_thread()


def _format_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _is_chief() -> bool:
  return jax.process_index() == 0


def train(
    process: Process,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    *,
    stop_at: int | None = None,
    log: Callable[[str], None] | None = None,
    eval_fn: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int | None = None,
    mesh=None,
) -> TrainState:
  """Train (or resume, or just restore a finished run) and return the final state.

  x, y: the full training arrays in host memory (model inputs, e.g. tokens or [-1,1] floats).
  stop_at: stop early at this step (still saving a checkpoint), e.g. to test resumption.
  eval_fn(ema_params) -> metrics, run every `eval_every` steps and at the end.
  """
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh or parallel.data_mesh()
  parallel.check_global_batch(cfg.batch_size, mesh)
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
  repl = parallel.replicated(mesh)
  tx = make_optimizer(cfg)
  init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))

  def global_batch(step: int):
    idx = parallel.process_slice(batch_indices(cfg.seed, step, cfg.batch_size, len(x)))
    return parallel.put_global_batch({"x": x[idx], "y": y[idx]}, mesh)

  abstract = jax.eval_shape(functools.partial(init_state, process, tx), global_batch(0), init_key)
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True)
  with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                             options=options) as manager:
    latest = manager.latest_step()
    if latest is not None:
      target = jax.tree.map(
          lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)
      state = manager.restore(latest, args=ocp.args.StandardRestore(target))
      log(f"resumed from step {latest} in {workdir}")
    else:
      state = jax.jit(functools.partial(init_state, process, tx), out_shardings=repl)(
          global_batch(0), init_key)
      log(f"initialised {num_params(state.params):,} parameters")

    step_fn = jax.jit(functools.partial(train_step, process, tx, cfg.ema_decay),
                      in_shardings=(repl, parallel.batch_sharding(mesh), repl),
                      out_shardings=(repl, repl), donate_argnums=0)
    start = int(state.step)
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    t0, last_log_step = time.perf_counter(), start
    with _Preemption() as preemption:
      for step in range(start, end):
        state, metrics = step_fn(state, global_batch(step), jax.random.fold_in(loop_key, step))
        done = step + 1
        record = None
        if done % cfg.log_every == 0 or done == end:
          metrics = jax.device_get(metrics)
          now = time.perf_counter()
          rate = (done - last_log_step) / max(now - t0, 1e-9)
          t0, last_log_step = now, done
          record = {"step": done, **{k: float(v) for k, v in metrics.items()},
                    "steps_per_sec": rate}
          log(f"step {done}/{cfg.steps}  loss {record['loss']:.4f}  {rate:.1f} steps/s  "
              f"ETA {_format_seconds((cfg.steps - done) / max(rate, 1e-9))}")
        if eval_fn is not None and eval_every and (done % eval_every == 0 or done == cfg.steps):
          record = record or {"step": done}
          evals = {f"eval/{k}": float(v) for k, v in eval_fn(state.ema_params).items()}
          record.update(evals)
          log(f"step {done} eval " + "  ".join(f"{k} {v:.4f}" for k, v in evals.items()))
        if record is not None and _is_chief():
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if done % cfg.checkpoint_every == 0 or done == end or preemption.requested:
          manager.save(done, args=ocp.args.StandardSave(state))
        if preemption.requested:
          break
    manager.wait_until_finished()
  if preemption.requested:
    # Stop the whole program, not just this loop: a caller must not go on with a half-trained
    # model as if it were finished.
    raise Preempted(f"SIGTERM: saved a checkpoint at step {int(state.step)} in {workdir}; "
                    "rerun the same command to resume")
  return state
