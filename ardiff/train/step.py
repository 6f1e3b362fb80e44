"""One train step as a pure function: the state, AdamW with warm-up and clipping, the EMA,
gradient accumulation, and the divergence guard that rides beside the state.

Divergence guard: the jitted step also returns `Divergence`, the first step whose loss,
gradient norm or updated parameters were not finite, carried on the device beside the state,
so finite steps cost no host sync. The loop reads it at every boundary (log, evaluation,
snapshot, checkpoint, stop) before anything is written, and stops with `TrainingDiverged`
naming the step (`divergence_message`): a non-finite state is never saved. The state itself is
computed exactly as without the guard (the flag is an extra output; tested bit for bit); the
cost is one pass over the parameters per step.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ardiff.data.base import batch_indices
from ardiff.processes.base import Process
from ardiff.train.config import TrainConfig


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


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


def accumulated_grads(process: Process, params, batch, key, micro: int):
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
  grad_accum > 1: the gradient averaged over that many micro-batches (`accumulated_grads`)."""
  if grad_accum > 1:
    (loss, metrics), grads = accumulated_grads(process, state.params, batch, key, grad_accum)
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


def init_state(process: Process, tx, example_batch, key) -> TrainState:
  params = process.init_params(key, example_batch)
  return TrainState(jnp.int32(0), params, params, tx.init(params))


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def divergence_message(divergence, cfg: TrainConfig, x: np.ndarray, last_saved: int | None,
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
