"""The training loop every process shares: data-parallel jit, AdamW, EMA, orbax checkpoints.

A run lives in a work dir: `checkpoints/` (orbax, atomic, keep N), `metrics.jsonl`,
`training.json` (the budget, the stopping step and the best validation loss). Calling `train`
again on the same dir resumes from the latest checkpoint; batches are a function of
(seed, step) alone, so an interrupted-and-resumed run equals an uninterrupted one. SIGTERM
(preemptible TPUs send it) saves a checkpoint at the next step and stops cleanly.

Budgets and convergence (`TrainConfig`):
  flops         a budget in FLOPs instead of steps: steps = floor(flops / F), with F the FLOPs
                of one train step as XLA counts them (cost analysis of the lowered step: the
                forward and backward pass, optimiser and EMA update), so models of different
                cost get the same compute, not the same number of steps;
  val_examples  the last N examples of the training arrays are held out (never trained on);
  eval_every    the EMA parameters' loss on them (common random numbers: the same keys every
                evaluation, so evaluations differ only by the parameters) every N steps;
  patience      stop after this many evaluations without a new best; the best EMA parameters
                are kept in `best/` and returned, the step they were reached at recorded;
  snapshots     fractions of the budget at which the best EMA so far (the current EMA without
                validation) is kept in `snapshots/<step>`: one run gives the models of smaller
                budgets for a quality-against-compute curve. Caveat: a snapshot shares the
                learning-rate schedule of the full budget (it is not a run that decayed to its
                own budget), which favours the full budget slightly.
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
  # Warm the EMA up: decay min(ema_decay, (1 + n) / (10 + n)) at update n (see `ema_decay_at`);
  # False: the fixed decay of models trained before the switch existed.
  ema_warmup: bool = True
  seed: int = 0
  log_every: int = 250
  checkpoint_every: int = 1000
  keep_checkpoints: int = 2
  # Budgets and convergence (module docstring). Defaults: a step budget, no validation.
  flops: float = 0.0  # > 0: the budget in FLOPs; `steps` is then derived from it
  val_examples: int = 0
  eval_every: int = 0
  patience: int = 0
  snapshots: tuple = ()

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
    if not isinstance(self.ema_warmup, bool):
      raise ConfigError(f"config key 'train.ema_warmup': must be true or false, got "
                        f"{self.ema_warmup!r}")
    if self.grad_clip <= 0:
      raise ConfigError(f"config key 'train.grad_clip': must be positive, got {self.grad_clip}")
    for name in ("val_examples", "eval_every", "patience"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config key 'train.{name}': must be an integer >= 0, got {value!r}")
    if self.flops < 0:
      raise ConfigError(f"config key 'train.flops': must be >= 0 (0: budget in steps), got "
                        f"{self.flops}")
    if (self.eval_every > 0) != (self.val_examples > 0):
      raise ConfigError("config key 'train.eval_every': validation needs both eval_every and "
                        f"val_examples > 0, got eval_every={self.eval_every}, "
                        f"val_examples={self.val_examples}")
    if self.patience and not self.eval_every:
      raise ConfigError("config key 'train.patience': early stopping needs validation "
                        "(train.eval_every and train.val_examples > 0)")
    if any(not 0 < f < 1 for f in self.snapshots):
      raise ConfigError(f"config key 'train.snapshots': fractions of the budget in (0, 1), got "
                        f"{list(self.snapshots)}")

  @classmethod
  def from_config(cls, cfg) -> "TrainConfig":
    values = dict(cfg) if not isinstance(cfg, dict) else cfg
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in known}
    if "snapshots" in values:
      values["snapshots"] = tuple(float(f) for f in values["snapshots"])
    return cls(**values)

  @property
  def validates(self) -> bool:
    return self.eval_every > 0


# TrainConfig fields added after models were first cached, with the defaults that leave
# training as it was: `ardiff.runs` leaves them out of a model's key at these values, so models
# trained before they existed stay valid.
LATER_FIELDS = {"flops": 0.0, "val_examples": 0, "eval_every": 0, "patience": 0,
                "snapshots": (), "ema_warmup": False}


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  lr = optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * 0.1)
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(lr, weight_decay=cfg.weight_decay))


def ema_decay_at(step: jax.Array, ema_decay: float, warmup: bool = True) -> jax.Array | float:
  """The EMA decay d_n of update n (n = `step`, the number of updates done before this one):

      warmup:  d_n = min(ema_decay, (1 + n) / (10 + n))      else  d_n = ema_decay,

  and the update is ema_{n+1} = d_n ema_n + (1 - d_n) params_{n+1}, from ema_0 = params_0.

  Why: with a fixed d = 0.999 the initialisation keeps weight d^N in the EMA after N updates
  (83% at N = 187, 22% at N = 1500), so short runs and early budget snapshots are mostly the
  untrained network. The warm-up (the `num_updates` form of TensorFlow's
  ExponentialMovingAverage) gives the initialisation weight prod_{n<N} d_n = 9! N! / (N + 9)!
  (1e-5 after 10 updates) and averages over about the last (10 + n) / 9 updates, i.e. the last
  ~11% of the run so far, until d_n reaches ema_decay (n = 8990 for 0.999); from then on it is
  the plain EMA. Adam-style bias correction (an EMA from zero divided by 1 - d^N) was not
  chosen: it removes the initialisation too, but for N << 1 / (1 - d) it is a near-uniform
  average of every iterate since the start, the early poor ones included.
  Traced: `step` may be a jit-traced int; the ratio is computed in float32 (relative error
  ~1e-7). Without warm-up the Python float itself, so the update is bit for bit the old one.
  """
  if not warmup:
    return ema_decay
  n = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(ema_decay), (1.0 + n) / (10.0 + n))


def train_step(process: Process, tx, ema_decay: float, state: TrainState, batch, key, *,
               ema_warmup: bool = False):
  """One AdamW step and one EMA update (decay `ema_decay_at(state.step, ...)`). `train` passes
  `TrainConfig.ema_warmup` (default on); a direct call without it keeps the fixed decay."""
  def loss_fn(params):
    return process.loss(params, batch, key, train=True)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = ema_decay_at(state.step, ema_decay, ema_warmup)
  ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
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


TRAINING_INFO = "training.json"


def read_training_info(workdir: str | os.PathLike) -> dict:
  """The run's `training.json` ({} if there is none yet)."""
  path = os.path.join(os.fspath(workdir), TRAINING_INFO)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _write_json_atomic(path: str, payload: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


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
  repl = parallel.replicated(mesh)
  tx = make_optimizer(cfg)
  idx = parallel.process_slice(np.arange(cfg.batch_size) % len(x))
  batch = parallel.put_global_batch({"x": x[idx], "y": y[idx]}, mesh)
  key = jax.random.key(0)
  abstract = jax.eval_shape(functools.partial(init_state, process, tx), batch, key)
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                        abstract)
  step = jax.jit(functools.partial(train_step, process, tx, cfg.ema_decay,
                                   ema_warmup=cfg.ema_warmup),
                 in_shardings=(repl, parallel.batch_sharding(mesh), repl),
                 out_shardings=(repl, repl))
  return step_flops(step.lower(target, batch, key))


def validation_split(x: np.ndarray, y: np.ndarray, n_val: int):
  """(x_train, y_train, x_val, y_val): the last n_val examples held out."""
  if n_val >= len(x):
    raise ConfigError(f"config key 'train.val_examples': {n_val} held out of {len(x)} training "
                      "examples leaves none to train on")
  return x[:len(x) - n_val], y[:len(y) - n_val], x[len(x) - n_val:], y[len(y) - n_val:]


def _validation_loss_fn(process: Process, x_val, y_val, batch_size: int, seed: int, mesh):
  """ema_params -> mean validation loss and metrics over fixed batches and fixed keys.

  Passes over the held-out set (each with its own fixed key) until ~1024 loss samples are
  drawn: the diffusion and ARDM losses sample a time / an order per example, and the same keys
  at every evaluation make successive evaluations differ only through the parameters.
  """
  n = len(x_val)
  per_pass = -(-n // batch_size)
  passes = max(1, -(-1024 // (per_pass * batch_size)))
  repl = parallel.replicated(mesh)
  batches = []
  for b in range(per_pass):
    idx = parallel.process_slice(np.arange(b * batch_size, (b + 1) * batch_size) % n)
    batches.append(parallel.put_global_batch({"x": x_val[idx], "y": y_val[idx]}, mesh))
  keys = [jax.random.fold_in(jax.random.key(seed), 1_000_003 + i)
          for i in range(passes * per_pass)]
  loss_fn = jax.jit(lambda p, b, k: process.loss(p, b, k, train=False),
                    in_shardings=(repl, parallel.batch_sharding(mesh), repl))

  def evaluate(ema_params) -> dict[str, float]:
    totals: dict[str, float] = {}
    for i, key in enumerate(keys):
      loss, metrics = loss_fn(ema_params, batches[i % per_pass], key)
      for k, v in {"loss": loss, **metrics}.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(keys) for k, v in totals.items()}

  return evaluate


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

  x, y: the full training arrays in host memory (model inputs, e.g. tokens or [-1,1] floats);
  with `cfg.val_examples` the last ones are held out for validation.
  stop_at: stop early at this step (still saving a checkpoint), e.g. to test resumption.
  eval_fn(ema_params) -> metrics, run every `eval_every` steps and at the end.
  With validation, the returned state's `ema_params` are the best EMA parameters (lowest
  validation loss) and its `step` the step training stopped at; `training.json` records both.
  """
  log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh or parallel.data_mesh()
  parallel.check_global_batch(cfg.batch_size, mesh)
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
  validate = None
  if cfg.validates:
    x, y, x_val, y_val = validation_split(x, y, cfg.val_examples)
    validate = _validation_loss_fn(process, x_val, y_val, cfg.batch_size, cfg.seed, mesh)
  repl = parallel.replicated(mesh)
  init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))

  def global_batch(step: int):
    idx = parallel.process_slice(batch_indices(cfg.seed, step, cfg.batch_size, len(x)))
    return parallel.put_global_batch({"x": x[idx], "y": y[idx]}, mesh)

  def jitted_step(tx):
    return jax.jit(functools.partial(train_step, process, tx, cfg.ema_decay,
                                     ema_warmup=cfg.ema_warmup),
                   in_shardings=(repl, parallel.batch_sharding(mesh), repl),
                   out_shardings=(repl, repl), donate_argnums=0)

  # The abstract state does not depend on the schedule's length, so the step's FLOPs are
  # counted before the number of steps is known (lowering only traces; nothing compiles).
  abstract = jax.eval_shape(functools.partial(init_state, process, make_optimizer(cfg)),
                            global_batch(0), init_key)
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl),
                        abstract)
  example_batch = global_batch(0)
  flops = step_flops(jitted_step(make_optimizer(cfg)).lower(target, example_batch, loop_key))
  if cfg.flops > 0:
    if not flops:
      raise ConfigError("config key 'train.flops': this backend gives no FLOP count for the "
                        "train step; give the budget in train.steps")
    # (1 + 1e-9): a budget of exactly n steps' FLOPs is n steps despite rounding.
    cfg = dataclasses.replace(cfg, steps=max(1, int(cfg.flops / flops * (1 + 1e-9))))
  tx = make_optimizer(cfg)
  info_path = os.path.join(workdir, TRAINING_INFO)
  info = read_training_info(workdir)
  info.update(flops_per_step=flops, steps=cfg.steps, batch_size=cfg.batch_size,
              train_examples=len(x), val_examples=cfg.val_examples)
  info.setdefault("wall_seconds", 0.0)
  snapshot_steps = sorted({max(1, round(f * cfg.steps)) for f in cfg.snapshots})
  absdir = os.path.abspath(workdir)
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True)
  with contextlib.ExitStack() as stack:
    manager = stack.enter_context(ocp.CheckpointManager(os.path.join(absdir, "checkpoints"),
                                                        options=options))
    best_manager = snapshot_manager = None
    if validate is not None:
      best_manager = stack.enter_context(ocp.CheckpointManager(
          os.path.join(absdir, "best"), options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                                              create=True)))
    if snapshot_steps:
      snapshot_manager = stack.enter_context(ocp.CheckpointManager(
          os.path.join(absdir, "snapshots"), options=ocp.CheckpointManagerOptions(create=True)))
    latest = manager.latest_step()
    if latest is not None:
      state = manager.restore(latest, args=ocp.args.StandardRestore(target))
      log(f"resumed from step {latest} in {workdir}")
    else:
      state = jax.jit(functools.partial(init_state, process, tx), out_shardings=repl)(
          example_batch, init_key)
      log(f"initialised {num_params(state.params):,} parameters")
    best_step = best_val = None
    if best_manager is not None and best_manager.latest_step() is not None:
      best_step = best_manager.latest_step()
      best_val = info.get("best_val")
      if best_val is None or info.get("best_step") != best_step:
        best_val = validate(_restore_params(best_manager, best_step, target.ema_params))["loss"]

    step_fn = jitted_step(tx)
    start = int(state.step)
    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    if info.get("stopped_early_at") is not None and start >= info["stopped_early_at"]:
      end = start  # converged earlier: nothing left to train
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    t0, last_log_step = time.perf_counter(), start
    stopped_early = False
    clock = [time.perf_counter()]  # wall time since training.json last counted it

    def save_info():
      now = time.perf_counter()
      info["wall_seconds"] += now - clock[0]
      clock[0] = now
      if _is_chief():
        _write_json_atomic(info_path, info)

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
        if validate is not None and (done % cfg.eval_every == 0 or done == cfg.steps
                                     or done in snapshot_steps):
          evals = validate(state.ema_params)
          record = record or {"step": done}
          record.update({f"val/{k}": v for k, v in evals.items()})
          if not np.isfinite(evals["loss"]):
            pass  # never a best; the non-finite guard of the loss itself is the run's concern
          elif best_val is None or evals["loss"] < best_val:
            best_step, best_val = done, evals["loss"]
            best_manager.save(done, args=ocp.args.StandardSave(state.ema_params), force=True)
            info.update(best_step=best_step, best_val=best_val)
          log(f"step {done} validation loss {evals['loss']:.4f} (best {best_val:.4f} at step "
              f"{best_step})")
          if cfg.patience and done - best_step >= cfg.patience * cfg.eval_every:
            stopped_early = True
        if eval_fn is not None and eval_every and (done % eval_every == 0 or done == cfg.steps):
          record = record or {"step": done}
          evals = {f"eval/{k}": float(v) for k, v in eval_fn(state.ema_params).items()}
          record.update(evals)
          log(f"step {done} eval " + "  ".join(f"{k} {v:.4f}" for k, v in evals.items()))
        if record is not None and _is_chief():
          with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if done in snapshot_steps:
          if best_manager is not None:
            best_manager.wait_until_finished()
            snap = _restore_params(best_manager, best_step, target.ema_params)
          else:
            snap = state.ema_params
          snapshot_manager.save(done, args=ocp.args.StandardSave(snap), force=True)
        if stopped_early:
          info["stopped_early_at"] = done
          log(f"early stop at step {done}: no better validation loss for {cfg.patience} "
              f"evaluations; best at step {best_step}")
        if (done % cfg.checkpoint_every == 0 or done == end or preemption.requested
            or stopped_early):
          manager.save(done, args=ocp.args.StandardSave(state), force=True)
          manager.wait_until_finished()
          info["step"] = done
          save_info()
        if preemption.requested or stopped_early:
          break
    manager.wait_until_finished()
    for m in (best_manager, snapshot_manager):
      if m is not None:
        m.wait_until_finished()
    if best_manager is not None and best_step is not None:
      state = state.replace(
          ema_params=_restore_params(best_manager, best_step, target.ema_params))
  if preemption.requested:
    # Stop the whole program, not just this loop: a caller must not go on with a half-trained
    # model as if it were finished.
    raise Preempted(f"SIGTERM: saved a checkpoint at step {int(state.step)} in {workdir}; "
                    "rerun the same command to resume")
  return state


def _restore_params(manager, step: int, target):
  return manager.restore(step, args=ocp.args.StandardRestore(target))


def snapshot_params(workdir: str | os.PathLike, target=None) -> dict[int, Any]:
  """{step: EMA parameters} kept at the budget fractions `TrainConfig.snapshots`."""
  path = os.path.join(os.path.abspath(os.fspath(workdir)), "snapshots")
  if not os.path.isdir(path):
    return {}
  with ocp.CheckpointManager(path) as manager:
    args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
    return {int(s): manager.restore(s, args=args) for s in manager.all_steps()}
