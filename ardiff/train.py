"""The training loop every process shares: data-parallel jit, AdamW, EMA, orbax checkpoints.

A run lives in a work dir: `checkpoints/` (orbax, atomic, keep N), `metrics.jsonl`,
`training.json` (the budget, the stopping step and the best validation loss). Calling `train`
again on the same dir resumes from the latest checkpoint; batches are a function of
(seed, step) alone, so an interrupted-and-resumed run equals an uninterrupted one. SIGTERM
(preemptible TPUs send it) and Ctrl-C (SIGINT) save a checkpoint at the next step and stop
cleanly (`Preempted`, `Interrupted`; a second Ctrl-C stops at once, as usual). On a multi-host
job a signal to any one host stops every host at one agreed step (`_Preemption`).

What a run writes and says: process 0 alone prints (`ardiff.console`: plain lines, plus a
progress bar with ETA on a terminal), appends to `metrics.jsonl` and writes TensorBoard event
files to `tensorboard/` (`ardiff.summaries`: every logged metric, the learning rate, steps/s,
validation and eval metrics, sample grids every `preview_every` steps, the config as hparams).

Nothing lost, nothing silent:
  lock          one process trains in a directory at a time (`ardiff.workdir`: a second one
                stops at once naming the holder's pid and host);
  divergence    the jitted step also returns `Divergence`: the first step whose loss, gradient
                norm or updated parameters were not finite, carried on the device beside the
                state, so finite steps cost no host sync. The host reads it at every boundary
                (log, evaluation, snapshot, checkpoint, stop) before anything is written, and
                stops with `TrainingDiverged` naming the step: a non-finite state is never
                saved, the last good checkpoint stays the latest. The state itself is computed
                exactly as without the guard (the flag is an extra output; tested bit for bit);
                the cost is one pass over the parameters per step. Detection lags by up to
                `log_every` steps of wasted compute, never by a save;
  checkpoints   verified by a sha256 manifest; a damaged latest step falls back to the previous
                one (`ardiff.checkpoints`), for `checkpoints/` and `best/` alike;
  metrics       `metrics.jsonl` is cut back to the restored step on resume (rows of steps the
                checkpoint does not hold would otherwise appear twice).

Extending a run: `train.steps` is not part of a model's cache key (`ardiff.runs.train_key`),
so rerunning with more steps resumes from the saved step. The warmup-cosine learning rate
depends on `steps`: from the resumed step on, the extended run follows the schedule of the new
budget (its rate jumps up where the old schedule had decayed further), so an extended run is
close to, not equal to, a run trained to the new budget from the start. A run that stopped
early (`patience`) stays stopped. Fewer steps than a run has done returns it as it is.

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
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ardiff import checkpoints, console, parallel, storage
from ardiff import summaries as summaries_lib
from ardiff.configs.validation import ConfigError
from ardiff.data.base import batch_indices
from ardiff.errors import TrainingDiverged
from ardiff.processes.base import Process
from ardiff.workdir import workdir_lock


class Preempted(Exception):
  """Raised after SIGTERM once a checkpoint is saved: rerun the same command to resume."""

  exit_code = 143  # the conventional exit status after SIGTERM (128 + 15)


class Interrupted(Preempted):
  """Raised after Ctrl-C (SIGINT) once a checkpoint is saved."""

  exit_code = 130  # 128 + SIGINT


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
  # Gradient accumulation: each update averages the gradients of grad_accum micro-batches of
  # batch_size / grad_accum examples (the same update with a deterministic loss; activations
  # for one micro-batch at a time). 1: the whole batch in one pass.
  grad_accum: int = 1
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
  # A grid of samples in TensorBoard every N steps (0: none; `ardiff.runs.fit_model` draws
  # them with the process's preview spec). Loop only: not part of a model's key.
  preview_every: int = 0
  # Train steps per jitted call (a lax.scan over them; 1: one call per step). Fewer dispatches
  # from the host, for accelerators where one small step is shorter than its launch; calls
  # are cut at every step where the loop logs, evaluates, saves or may stop, so metrics,
  # checkpoints and preemption behave as with 1. Loop only: not part of a model's key.
  steps_per_call: int = 1

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
    if (not isinstance(self.grad_accum, int) or isinstance(self.grad_accum, bool)
        or self.grad_accum < 1 or self.batch_size % self.grad_accum):
      raise ConfigError(f"config key 'train.grad_accum': must be a positive integer dividing "
                        f"train.batch_size={self.batch_size}, got {self.grad_accum!r}")
    if self.grad_clip <= 0:
      raise ConfigError(f"config key 'train.grad_clip': must be positive, got {self.grad_clip}")
    if (not isinstance(self.steps_per_call, int) or isinstance(self.steps_per_call, bool)
        or self.steps_per_call < 1):
      raise ConfigError(f"config key 'train.steps_per_call': must be a positive integer, got "
                        f"{self.steps_per_call!r}")
    for name in ("val_examples", "eval_every", "patience", "preview_every"):
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
                "snapshots": (), "ema_warmup": False, "grad_accum": 1, "preview_every": 0,
                "steps_per_call": 1}


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
  """Linear warm-up to cfg.learning_rate, then cosine decay to a tenth of it at cfg.steps."""
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.steps, cfg.warmup_steps + 1),
      end_value=cfg.learning_rate * 0.1)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                     optax.adamw(learning_rate_schedule(cfg), weight_decay=cfg.weight_decay))


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


def _accumulated_grads(process: Process, params, batch, key, micro: int):
  """((loss, metrics), grads) averaged over `micro` micro-batches (a lax.scan, one micro-batch
  of activations at a time). Micro-batch i holds examples i, i + micro, i + 2 micro, ..., so
  that each device's rows of a batch sharded over the mesh stay on it; its key is
  fold_in(key, i). With a loss that is a mean over examples and draws nothing, the result is
  the full batch's, up to float rounding."""
  split = jax.tree.map(lambda a: jnp.swapaxes(a.reshape(a.shape[0] // micro, micro,
                                                        *a.shape[1:]), 0, 1), batch)
  grad_fn = jax.value_and_grad(lambda p, b, k: process.loss(p, b, k, train=True), has_aux=True)

  def body(total, xs):
    i, chunk = xs
    out = grad_fn(params, chunk, jax.random.fold_in(key, i))
    return jax.tree.map(jnp.add, total, out), None

  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params,
                                                      jax.tree.map(lambda a: a[0], split), key))
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(micro), split))
  return jax.tree.map(lambda t: t / micro, total)


def train_step(process: Process, tx, ema_decay: float, state: TrainState, batch, key, *,
               ema_warmup: bool = False, grad_accum: int = 1):
  """One AdamW step and one EMA update (decay `ema_decay_at(state.step, ...)`). `train` passes
  `TrainConfig.ema_warmup` (default on); a direct call without it keeps the fixed decay.
  grad_accum > 1: the gradient averaged over that many micro-batches (`_accumulated_grads`)."""
  if grad_accum > 1:
    (loss, metrics), grads = _accumulated_grads(process, state.params, batch, key, grad_accum)
  else:
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: process.loss(p, batch, key, train=True), has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  d = ema_decay_at(state.step, ema_decay, ema_warmup)
  ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return TrainState(state.step + 1, params, ema, opt_state), metrics


@flax.struct.dataclass
class Divergence:
  """The first step (counted from 1; 0: none yet) whose loss, gradient norm or updated
  parameters were not finite, with that step's loss and gradient norm."""

  step: jax.Array
  loss: jax.Array
  grad_norm: jax.Array

  @classmethod
  def none(cls) -> "Divergence":
    return cls(jnp.int32(0), jnp.float32(0.0), jnp.float32(0.0))


def guarded_train_step(process: Process, tx, ema_decay: float, state: TrainState,
                       divergence: Divergence, batch, key, *, ema_warmup: bool = False,
                       grad_accum: int = 1):
  """`train_step`, and `divergence` updated if this step is the first non-finite one.

  The new state is `train_step`'s, untouched: the guard only adds outputs (the flag, and one
  finiteness reduction over the new parameters), so finite runs train bit for bit as before.
  A non-finite state is never used, since the host stops at the next boundary before saving.
  """
  state, metrics = train_step(process, tx, ema_decay, state, batch, key, ema_warmup=ema_warmup,
                              grad_accum=grad_accum)
  loss, grad_norm = metrics["loss"], metrics["grad_norm"]
  params_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(state.params)
                                     if jnp.issubdtype(p.dtype, jnp.inexact)]))
  first = (divergence.step == 0) & ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite)
  now = Divergence(state.step, loss.astype(jnp.float32), grad_norm.astype(jnp.float32))
  divergence = jax.tree.map(lambda n, o: jnp.where(first, n, o), now, divergence)
  return state, divergence, metrics


def guarded_train_steps(process: Process, tx, ema_decay: float, state: TrainState,
                        divergence: Divergence, batches, keys, *, ema_warmup: bool = False,
                        grad_accum: int = 1):
  """`guarded_train_step` for each of n stacked batches [n, B, ...] and keys [n], in one
  lax.scan; the metrics come back stacked [n]."""
  def body(carry, xs):
    state, divergence = carry
    state, divergence, metrics = guarded_train_step(
        process, tx, ema_decay, state, divergence, *xs, ema_warmup=ema_warmup,
        grad_accum=grad_accum)
    return (state, divergence), metrics

  (state, divergence), metrics = jax.lax.scan(body, (state, divergence), (batches, keys))
  return state, divergence, metrics


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


def init_state(process: Process, tx, example_batch, key) -> TrainState:
  params = process.init_params(key, example_batch)
  return TrainState(jnp.int32(0), params, params, tx.init(params))


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


class _Preemption(contextlib.AbstractContextManager):
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a stop the loop checks with `poll(step)`,
  so the run saves and exits cleanly; `requested` is the signal's number (0: none). A second
  Ctrl-C raises KeyboardInterrupt at once, as Python does by default.

  coordinated (multi-host jobs): hosts told to stop at different steps must not save apart
  (one host in orbax's collective save while the others train on is a hang). SIGTERM is left
  to JAX's preemption notifier (installed by `jax.distributed.initialize`), which tells every
  host through the coordination service; they agree on one step (the largest step any host
  had reached, plus one) and `poll` reports the stop there on every host alike
  (`multihost_utils.reached_preemption_sync_point`, called at every step as it requires). A
  Ctrl-C on any host is forwarded to that notifier as a SIGTERM, so it stops the job the same
  way (reported as a preemption, exit 143).
  """

  def __init__(self, coordinated: bool = False):
    self.requested = 0
    self.coordinated = coordinated
    self._interrupted = False
    self._previous = {}

  def __enter__(self):
    if _in_main_thread():
      names = ("SIGINT",) if self.coordinated else ("SIGTERM", "SIGINT")
      for name in names:
        if hasattr(signal, name):
          sig = getattr(signal, name)
          self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self._interrupted:
        raise KeyboardInterrupt
      self._interrupted = True
      if self.coordinated:
        os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: every host stops together
        return
    self.requested = self.requested or signum

  def poll(self, step: int) -> int:
    """The signal to stop on after `step` (0: go on). Coordinated: every host gets the same
    answer at every step."""
    if self.coordinated and not self.requested:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = signal.SIGTERM
    return self.requested

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    return False


def _in_main_thread() -> bool:
  import threading

  return threading.current_thread() is threading.main_thread()


def _format_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"



TRAINING_INFO = "training.json"


def read_training_info(workdir: str | os.PathLike) -> dict:
  """The run's `training.json` ({} if there is none yet)."""
  path = storage.join(workdir, TRAINING_INFO)
  if not storage.exists(path):
    return {}
  return json.loads(storage.read_text(path))


def _write_json_atomic(path: str, payload: dict) -> None:
  storage.write_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


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
  return _plain_step_flops(process, cfg, _state_target(process, cfg, batch, key, mesh), batch,
                           key, mesh)


def _state_target(process: Process, cfg: TrainConfig, batch, key, mesh):
  """The train state's shapes and dtypes, replicated over `mesh` (traced, nothing runs)."""
  repl = parallel.replicated(mesh)
  abstract = jax.eval_shape(functools.partial(init_state, process, make_optimizer(cfg)), batch,
                            key)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), abstract)


def _plain_step_flops(process: Process, cfg: TrainConfig, target, batch, key,
                      mesh) -> float | None:
  """XLA's FLOP count of the plain train step on this global batch, from `target`
  (`_state_target`). Not the guarded step's: the divergence guard is not the model's compute.
  Always the whole batch in one pass: XLA costs a loop's body once, so an accumulating step
  would read grad_accum times too few; accumulation does the same arithmetic.
  The state's shapes do not depend on the schedule's length, so this works before the number
  of steps is known; lowering only traces, nothing compiles."""
  repl = parallel.replicated(mesh)
  step = jax.jit(functools.partial(train_step, process, make_optimizer(cfg), cfg.ema_decay,
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
    preview_fn: Callable[[Any], np.ndarray] | None = None,
    mesh=None,
) -> TrainState:
  """Train (or resume, or just restore a finished run) and return the final state.

  x, y: the full training arrays in host memory (model inputs, e.g. tokens or [-1,1] floats);
  with `cfg.val_examples` the last ones are held out for validation.
  stop_at: stop early at this step (still saving a checkpoint), e.g. to test resumption.
  eval_fn(ema_params) -> metrics, run every `eval_every` steps and at the end.
  preview_fn(ema_params) -> images [N, H, W(, C)], drawn every `cfg.preview_every` steps and at
  the end into TensorBoard (every process calls it: sampling may be a collective).
  log: where progress lines go (default `ardiff.console.log`: stderr, process 0 only).
  Beside metrics.jsonl, process 0 writes TensorBoard event files to `workdir/tensorboard`
  (`ardiff.summaries`): the metrics' scalars, the learning rate, the config as hparams.
  With validation, the returned state's `ema_params` are the best EMA parameters (lowest
  validation loss) and its `step` the step training stopped at; `training.json` records both.
  Raises WorkdirLocked (another process trains in `workdir`), TrainingDiverged, CheckpointDamaged
  (no intact checkpoint to resume from), Preempted (SIGTERM) and Interrupted (Ctrl-C).
  """
  workdir = os.fspath(workdir)
  with workdir_lock(workdir, "training", take=console.is_chief()):
    return _train(process, x, y, cfg, workdir, stop_at=stop_at, log=log or console.log,
                  eval_fn=eval_fn, eval_every=eval_every, preview_fn=preview_fn, mesh=mesh)


# Compiled programs of recent (process, config, mesh) triples: see `_programs`.
_PROGRAMS: dict = {}
_PROGRAMS_KEPT = 4


def _programs(process: Process, cfg: TrainConfig, mesh):
  """(guarded train step, initialiser), jitted once per (process, config, mesh) and kept across
  calls of `train` in one Python process (the last few), so that resuming a run, or training
  several seeds of one model, compiles once. The key is the whole config except fields that
  only steer the loop around the step (seed, logging, checkpointing, validation), so a field
  added later is in it. Processes are frozen dataclasses: equal ones (same class, same fields)
  compute the same, so they share programs; one that is not hashable is keyed by its identity
  (and held in the cache, so that its id is not reused while keyed)."""
  loop_only = dict(seed=0, log_every=1, checkpoint_every=1, keep_checkpoints=1, flops=0.0,
                   val_examples=0, eval_every=0, patience=0, snapshots=(), preview_every=0,
                   steps_per_call=1)
  try:
    hash(process)
    which = process
  except TypeError:
    which = ("id", id(process))
  key = (which, dataclasses.replace(cfg, **loop_only), mesh)
  if key not in _PROGRAMS:
    while len(_PROGRAMS) >= _PROGRAMS_KEPT:
      _PROGRAMS.pop(next(iter(_PROGRAMS)))
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
    _PROGRAMS[key] = (process, step, init, scan)
  return _PROGRAMS[key][1:]


def _truncate_metrics(path: str, step: int) -> int:
  """Drop the rows of `metrics.jsonl` past `step` (and torn lines), atomically; how many."""
  if not storage.exists(path):
    return 0
  kept, dropped = [], 0
  for line in storage.read_text(path).splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      dropped += 1
      continue
    if row.get("step", 0) > step:
      dropped += 1
    else:
      kept.append(line + "\n")
  if dropped:
    storage.write_atomic(path, "".join(kept))
  return dropped


def _divergence_message(divergence, cfg: TrainConfig, x: np.ndarray, last_saved: int | None,
                        checkpoint_dir: str) -> str:
  """One line: the step, the values, the likely cause (the data is checked now, on failure),
  and what is kept."""
  step = int(divergence.step)
  loss, grad_norm = float(divergence.loss), float(divergence.grad_norm)
  what = f"loss {loss:g}, gradient norm {grad_norm:g}"
  if np.isfinite(loss) and np.isfinite(grad_norm):
    what += ", non-finite parameters after the update"
  cause = (f"likely causes: a learning rate too high (train.learning_rate="
           f"{cfg.learning_rate:g}), or NaN/inf in the training data")
  if np.issubdtype(x.dtype, np.inexact):
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
      in_batch = np.intersect1d(bad, batch_indices(cfg.seed, step - 1, cfg.batch_size, len(x)))
      cause = (f"the training data holds NaN/inf in {len(bad)} example(s) (index "
               f"{', '.join(str(i) for i in bad[:5])}{', ...' if len(bad) > 5 else ''}; "
               f"{len(in_batch)} in step {step}'s batch): fix the data")
  kept = (f"the last good checkpoint, step {last_saved}, stays the latest in {checkpoint_dir}"
          if last_saved is not None else "no checkpoint was saved")
  return f"training diverged at step {step} ({what}); {cause}; {kept}"


def _train(process, x, y, cfg, workdir, *, stop_at, log, eval_fn, eval_every, preview_fn, mesh):
  storage.makedirs(workdir)
  mesh = mesh or parallel.data_mesh()
  parallel.check_global_batch(cfg.batch_size, mesh)
  if (cfg.batch_size // mesh.devices.size) % cfg.grad_accum:
    raise ConfigError(f"config key 'train.grad_accum': {cfg.grad_accum} micro-batches must "
                      f"divide each device's {cfg.batch_size // mesh.devices.size} examples "
                      f"(train.batch_size={cfg.batch_size} over {mesh.devices.size} devices)")
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
  validate = None
  if cfg.validates:
    x, y, x_val, y_val = validation_split(x, y, cfg.val_examples)
    validate = _validation_loss_fn(process, x_val, y_val, cfg.batch_size, cfg.seed, mesh)
  repl = parallel.replicated(mesh)
  init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))
  chief = console.is_chief()

  def global_batch(step: int):
    idx = parallel.process_slice(batch_indices(cfg.seed, step, cfg.batch_size, len(x)))
    return parallel.put_global_batch({"x": x[idx], "y": y[idx]}, mesh)

  def global_batches(step: int, n: int):
    """The batches of steps step..step+n-1 stacked [n, B, ...] (each as `global_batch`)."""
    idx = np.stack([parallel.process_slice(batch_indices(cfg.seed, s, cfg.batch_size, len(x)))
                    for s in range(step, step + n)])
    return parallel.put_stacked_batches({"x": x[idx], "y": y[idx]}, mesh)

  example_batch = global_batch(0)
  target = _state_target(process, cfg, example_batch, init_key, mesh)
  flops = _plain_step_flops(process, cfg, target, example_batch, loop_key, mesh)
  if cfg.flops > 0:
    if not flops:
      raise ConfigError("config key 'train.flops': this backend gives no FLOP count for the "
                        "train step; give the budget in train.steps")
    # (1 + 1e-9): a budget of exactly n steps' FLOPs is n steps despite rounding.
    cfg = dataclasses.replace(cfg, steps=max(1, int(cfg.flops / flops * (1 + 1e-9))))
  step_fn, init_fn, scan_fn = _programs(process, cfg, mesh)
  info_path = storage.join(workdir, TRAINING_INFO)
  info = read_training_info(workdir)
  previous_steps = info.get("steps")
  info.update(flops_per_step=flops, steps=cfg.steps, batch_size=cfg.batch_size,
              train_examples=len(x), val_examples=cfg.val_examples)
  info.setdefault("wall_seconds", 0.0)
  snapshot_steps = sorted({max(1, round(f * cfg.steps)) for f in cfg.snapshots})
  absdir = storage.absolute(workdir)
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True)
  with contextlib.ExitStack() as stack:
    manager = stack.enter_context(ocp.CheckpointManager(storage.join(absdir, "checkpoints"),
                                                        options=options))
    best_manager = snapshot_manager = None
    if validate is not None:
      best_manager = stack.enter_context(ocp.CheckpointManager(
          storage.join(absdir, "best"), options=ocp.CheckpointManagerOptions(max_to_keep=1,
                                                                              create=True)))
    if snapshot_steps:
      snapshot_manager = stack.enter_context(ocp.CheckpointManager(
          storage.join(absdir, "snapshots"), options=ocp.CheckpointManagerOptions(create=True)))
    state, latest = checkpoints.restore_latest(manager, target, log, move=chief)
    if latest is not None:
      log(f"resumed from step {latest} in {workdir}")
    else:
      state = init_fn(example_batch, init_key)
      log(f"initialised {num_params(state.params):,} parameters")
    start = int(state.step)
    metrics_path = storage.join(workdir, "metrics.jsonl")
    dropped = _truncate_metrics(metrics_path, start) if chief else 0
    if dropped:
      log(f"{metrics_path}: dropped {dropped} row(s) past step {start}, the restored step")
    summaries = stack.enter_context(summaries_lib.Summaries(
        storage.join(workdir, summaries_lib.SUBDIR), purge_step=start, enabled=chief))
    summaries.hparams({**dataclasses.asdict(cfg), "flops_per_step": flops or 0.0,
                       "num_params": num_params(state.params)})
    schedule = learning_rate_schedule(cfg)
    if start and previous_steps is not None and previous_steps != cfg.steps:
      log(f"train.steps is now {cfg.steps} (was {previous_steps}) for the run at step {start}"
          + (": it is past that, kept as it is" if start > cfg.steps else
             ": extending it; from here the learning rate follows the new budget's schedule"))
    info["steps"] = max(cfg.steps, start)
    best_step = best_val = None
    if best_manager is not None:
      had_best = bool(best_manager.all_steps())
      best_params, best_step = checkpoints.restore_latest(best_manager, target.ema_params, log,
                                                          move=chief, required=False)
      if best_step is not None:
        best_val = info.get("best_val")
        if best_val is None or info.get("best_step") != best_step:
          best_val = validate(best_params)["loss"]
      elif had_best:
        info.pop("best_step", None)
        info.pop("best_val", None)
        log(f"the best EMA parameters in {best_manager.directory} are lost"
            + (f"; the EMA of step {start} is the best so far" if start else ""))
        if start:
          best_val = validate(state.ema_params)["loss"]
          if np.isfinite(best_val):
            best_step = start
            checkpoints.save(best_manager, start, state.ema_params, chief=chief)
            info.update(best_step=best_step, best_val=best_val)
          else:
            best_val = None
      del best_params

    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    if info.get("stopped_early_at") is not None and start >= info["stopped_early_at"]:
      end = start  # converged earlier: nothing left to train
    t0, last_log_step = time.perf_counter(), start
    stopped_early = False
    clock = [time.perf_counter()]  # wall time since training.json last counted it
    divergence = jax.device_put(Divergence.none(), repl)

    def stop_if_diverged():
      seen = jax.device_get(divergence)
      if int(seen.step):
        raise TrainingDiverged(_divergence_message(seen, cfg, x, manager.latest_step(),
                                                   os.fspath(manager.directory)))

    def save_info():
      now = time.perf_counter()
      info["wall_seconds"] += now - clock[0]
      clock[0] = now
      if chief:
        _write_json_atomic(info_path, info)

    with (_Preemption(coordinated=jax.process_count() > 1) as preemption,
          console.progress(end, start) as bar):
      periods = (cfg.log_every, cfg.checkpoint_every, cfg.eval_every if validate else 0,
                 eval_every if eval_fn is not None else 0,
                 cfg.preview_every if preview_fn is not None else 0)
      step = start
      while step < end:
        n = steps_in_call(step, end, cfg.steps_per_call, periods, (cfg.steps, *snapshot_steps))
        if n == 1:
          state, divergence, metrics = step_fn(state, divergence, global_batch(step),
                                               jax.random.fold_in(loop_key, step))
        else:
          keys = jax.vmap(lambda s: jax.random.fold_in(loop_key, s))(
              jnp.arange(step, step + n))
          state, divergence, metrics = scan_fn(state, divergence, global_batches(step, n),
                                               keys)
          metrics = jax.tree.map(lambda m: m[-1], metrics)  # the call's last step's
        done = step + n
        bar.update(n)
        record = None
        log_now = done % cfg.log_every == 0 or done == end
        validate_now = validate is not None and (done % cfg.eval_every == 0 or done == cfg.steps
                                                 or done in snapshot_steps)
        eval_now = eval_fn is not None and eval_every and (done % eval_every == 0
                                                           or done == cfg.steps)
        preview_now = preview_fn is not None and cfg.preview_every and (
            done % cfg.preview_every == 0 or done == end)
        save_now = done % cfg.checkpoint_every == 0 or done == end
        boundary = (log_now or validate_now or eval_now or preview_now or save_now
                    or done in snapshot_steps)
        if boundary:  # the guard's one host sync, before anything is logged, evaluated or saved
          stop_if_diverged()
        if log_now:
          metrics = jax.device_get(metrics)
          now = time.perf_counter()
          rate = (done - last_log_step) / max(now - t0, 1e-9)
          t0, last_log_step = now, done
          record = {"step": done, **{k: float(v) for k, v in metrics.items()},
                    "steps_per_sec": rate, "learning_rate": float(schedule(done - 1))}
          log(f"step {done}/{cfg.steps}  loss {record['loss']:.4f}  {rate:.1f} steps/s  "
              f"ETA {_format_seconds((cfg.steps - done) / max(rate, 1e-9))}")
        if validate_now:
          evals = validate(state.ema_params)
          record = record or {"step": done}
          record.update({f"val/{k}": v for k, v in evals.items()})
          if not np.isfinite(evals["loss"]):
            pass  # never a best (the parameters are finite: the held-out data may not be)
          elif best_val is None or evals["loss"] < best_val:
            best_step, best_val = done, evals["loss"]
            checkpoints.save(best_manager, done, state.ema_params, chief=chief)
            info.update(best_step=best_step, best_val=best_val)
          best = (f"best {best_val:.4f} at step {best_step}" if best_step is not None
                  else "no finite best yet")
          log(f"step {done} validation loss {evals['loss']:.4f} ({best})")
          if cfg.patience and done - (best_step or 0) >= cfg.patience * cfg.eval_every:
            stopped_early = True
        if eval_now:
          record = record or {"step": done}
          evals = {f"eval/{k}": float(v) for k, v in eval_fn(state.ema_params).items()}
          record.update(evals)
          log(f"step {done} eval " + "  ".join(f"{k} {v:.4f}" for k, v in evals.items()))
        if preview_now:
          summaries.images(done, "samples", np.asarray(preview_fn(state.ema_params)))
        if record is not None:
          summaries.scalars(done, {k: v for k, v in record.items() if k != "step"})
        if record is not None and chief:
          storage.append_line(metrics_path, json.dumps(record))
        if done in snapshot_steps:
          if best_step is not None:
            snap = checkpoints.restore(best_manager, best_step, target.ema_params)
          else:
            snap = state.ema_params
          checkpoints.save(snapshot_manager, done, snap, chief=chief)
        if stopped_early:
          info["stopped_early_at"] = done
          log(f"early stop at step {done}: no better validation loss for {cfg.patience} "
              f"evaluations; best at step {best_step}")
        # Read once: a later signal is the next call's. Every step of the call is polled (the
        # multi-host sync point may fall inside it; all hosts then stop at its end).
        requested = 0
        for s in range(step + 1, done + 1):
          requested = requested or preemption.poll(s)
        if save_now or stopped_early or requested:
          if not boundary:
            stop_if_diverged()
          summaries.flush()
          checkpoints.save(manager, done, state, chief=chief)
          info["step"] = done
          save_info()
        if requested or stopped_early:
          break
        step = done
    manager.wait_until_finished()
    for m in (best_manager, snapshot_manager):
      if m is not None:
        m.wait_until_finished()
    if best_manager is not None and best_step is not None:
      state = state.replace(
          ema_params=checkpoints.restore(best_manager, best_step, target.ema_params))
  if preemption.requested:
    # Stop the whole program, not just this loop: a caller must not go on with a half-trained
    # model as if it were finished.
    error, what = ((Interrupted, "Ctrl-C") if preemption.requested == signal.SIGINT
                   else (Preempted, "SIGTERM"))
    raise error(f"{what}: saved a checkpoint at step {int(state.step)} in {workdir}; "
                "rerun the same command to resume")
  return state


def snapshot_params(workdir: str | os.PathLike, target=None) -> dict[int, Any]:
  """{step: EMA parameters} kept at the budget fractions `TrainConfig.snapshots` (verified:
  CheckpointDamaged names a damaged one)."""
  path = storage.join(storage.absolute(workdir), "snapshots")
  if not storage.isdir(path):
    return {}
  with ocp.CheckpointManager(path) as manager:
    return {int(s): checkpoints.restore(manager, s, target) for s in manager.all_steps()}
