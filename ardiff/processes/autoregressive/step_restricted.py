"""ARDM trained only on the masks of a few decoding steps: per-step networks vs one shared one.

A parallel decoding plan with step sizes k_0..k_{S-1} (summing to L) in a uniformly random
order reveals k_s pixels at step s, each drawn independently from the network's marginals given
the t_s = k_0 + ... + k_{s-1} pixels revealed before. The revealed set R is a uniform subset of
size t_s and the k_s pixels revealed next are a uniform subset of the L - t_s hidden ones, so
every hidden pixel is equally likely to be among them and the step's expected cost is

  C_s(x) = E_{R: |R| = t_s} [ k_s / (L - t_s) * sum_{i not in R} -log p(x_i | x_R, y) ]    (nats).

sum_s C_s(x) is the S-step parallel decoding bound: the decoder's log-likelihood under one
order is sum_s sum_{i in step s} log p(x_i | x_{R_s}), and averaging over orders (Jensen)
gives -log p_decoder(x) <= sum_s C_s(x). With S = L (k = 1) it is the ARDM bound.

A network trained for the steps `train_steps` (a subset of 0..S-1, m of them) sees, per
example, s uniform in `train_steps`, a uniform R of size t_s, and

  estimate = m * k_s / (L - t_s) * sum_{i not in R} -log p(x_i | x_R, y),
  E[estimate] = sum_{s in train_steps} C_s(x).

The training loss divides it by K = sum_{s in train_steps} k_s (the pixels those steps
reveal): for one step (a per-step network) that is the mean -log p over the hidden pixels;
for every step of a uniform plan it is the S-step bound per pixel. Both are on the same per-pixel
scale, so the optimiser (Adam, gradient clipping) treats per-step and shared networks alike.

Caveat: the revealed count tells the network which step it serves; a per-step network never
sees any other count, so it is only valid for its own step.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.processes import categorical
from ardiff.processes.autoregressive import objectives, orders
from ardiff.processes.autoregressive.order_agnostic import OrderAgnosticAR


def revealed_counts(step_sizes: Sequence[int]) -> tuple[int, ...]:
  """t_s = k_0 + ... + k_{s-1}: pixels revealed before each step."""
  return tuple(int(t) for t in np.concatenate([[0], np.cumsum(step_sizes)[:-1]]))


def check_train_steps(train_steps: Sequence[int] | None, num_steps: int) -> tuple[int, ...]:
  """Distinct step indices in 0..num_steps-1, sorted (None: every step)."""
  if train_steps is None:
    return tuple(range(num_steps))
  steps = tuple(sorted({int(s) for s in train_steps}))
  if not steps or steps[0] < 0 or steps[-1] >= num_steps or len(steps) != len(train_steps):
    raise ValueError(f"train_steps must be distinct step indices in 0..{num_steps - 1}, got "
                     f"{list(train_steps)}")
  return steps


def sample_step_masks(key: jax.Array, batch: int, length: int, counts: Sequence[int]):
  """Per example: j uniform in 0..len(counts)-1 and a uniform subset of counts[j] positions.

  Returns (j int32 [batch], revealed bool [batch, length]) with revealed[b].sum() ==
  counts[j[b]] exactly.
  """
  k_j, k_order = jax.random.split(key)
  j = jax.random.randint(k_j, (batch,), 0, len(counts))
  t = jnp.asarray(counts, jnp.int32)[j]
  ranks = jnp.argsort(orders.random_orders(k_order, batch, length), axis=-1)
  return j, ranks < t[:, None]


def step_cost_given(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
                    revealed: jax.Array, step_size, mask_id: int) -> jax.Array:
  """k / (L - t) * sum over hidden of -log p(x_i | x_revealed, y): [B] nats.

  revealed: bool [B, L] with t = revealed.sum(-1) < L; step_size: k, a scalar or int [B].
  """
  nll = categorical.token_nll(logits_fn(jnp.where(revealed, x, mask_id), y), x)
  hidden = ~revealed
  return (jnp.asarray(step_size, jnp.float32) / hidden.sum(axis=-1)
          * jnp.where(hidden, nll, 0.0).sum(axis=-1))


def step_restricted_loss(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
                         key: jax.Array, step_sizes: Sequence[int], train_steps: Sequence[int],
                         mask_id: int) -> jax.Array:
  """One-sample estimate of sum_{s in train_steps} C_s per example: [B] nats."""
  counts = revealed_counts(step_sizes)
  j, revealed = sample_step_masks(key, x.shape[0], x.shape[1],
                                  [counts[s] for s in train_steps])
  k = jnp.asarray([step_sizes[s] for s in train_steps], jnp.float32)[j]
  return len(train_steps) * step_cost_given(logits_fn, x, y, revealed, k, mask_id)


def step_cost(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
              revealed_count, step_size, mask_id: int, draws: int = 1) -> jax.Array:
  """C_s per example, averaged over `draws` uniform reveal sets of size revealed_count: [B] nats.

  The same key gives the same reveal sets whatever the network (paired comparisons).
  """
  b, length = x.shape

  def body(total, k):
    ranks = jnp.argsort(orders.random_orders(k, b, length), axis=-1)
    revealed = ranks < revealed_count
    return total + step_cost_given(logits_fn, x, y, revealed, step_size, mask_id), None

  total, _ = jax.lax.scan(body, jnp.zeros(b, jnp.float32), jax.random.split(key, draws))
  return total / draws


class StepRestrictedAR(OrderAgnosticAR):
  """ARDM whose training masks are those of the steps `train_steps` of a plan `step_sizes`.

  Sampling is ARDM's (`ardm` specs); it is meaningful for plans whose revealed counts the
  network was trained on (e.g. `ardm:k=16` for the shared network of a 4-step plan at L = 64).
  Metrics: `steps_cost` (nats per example, the estimate above) and `steps_cost_bpd` (the same
  per pixel of the image in bits: the trained steps' share of the S-step bound).
  """

  _nll_key, _bpd_key = "steps_cost", "steps_cost_bpd"

  def __init__(self, model, step_sizes: Sequence[int], train_steps: Sequence[int] | None = None,
               p_uncond: float = 0.1, data_shape: Sequence[int] | None = None):
    super().__init__(model, p_uncond=p_uncond, data_shape=data_shape)
    self.step_sizes_plan = orders.check_step_sizes(step_sizes, self.seq_len)
    self.train_steps = check_train_steps(train_steps, len(self.step_sizes_plan))
    self.pixels_trained = sum(self.step_sizes_plan[s] for s in self.train_steps)

  def _nll(self, logits_fn, x, y, key):
    return step_restricted_loss(logits_fn, x, y, key, self.step_sizes_plan, self.train_steps,
                                self.model.mask_id)

  def loss(self, params, batch, key, train: bool = True):
    """The estimate per pixel revealed by the trained steps: E = sum C_s / K (nats)."""
    loss, metrics = super().loss(params, batch, key, train)  # estimate / L
    return loss * self.seq_len / self.pixels_trained, metrics
