"""Raster order with a bidirectional predictor: the causal model's chain rule, learned one
generation step per example.

The model is the same `Transformer` as raster AR but with ``causal=False`` and a mask token:
to predict pixel t it reads

  inputs_t = (x_0, ..., x_{t-1}, m, ..., m)      (m = mask id, positions t..L-1 hidden)

and returns p(x_t | x_<t, y) from its logits at position t. Every revealed pixel attends to
every other revealed pixel (and to the masks), so the representation of the context is
recomputed for each t, instead of being shared by all positions as in a causal network.

Likelihood (exact, L network calls per example):

  -log p(x | y) = sum_{t=0}^{L-1} -log p(x_t | x_<t, y).

Training loss: one generation step per example. With t ~ U{0..L-1},

  estimate = L * (-log p(x_t | x_<t, y)),   E_t[estimate] = -log p(x | y),

an unbiased one-sample estimate of the exact NLL (`one_step_loss`). A causal network gets all L
terms from one forward pass; this one gets one term per forward pass, so it sees L times fewer
supervised predictions for the same number of examples (and about the same FLOPs per example).

Sampling (`raster`, option `temperature`): one pixel per step in raster order, L network calls;
no KV cache is possible because each step's context representation changes with t.

Caveat: positions > t are always masked, so the network could only ever learn the raster
conditionals; the mask pattern tells it t. Its logits at positions other than t are never
trained.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ardiff.processes import categorical
from ardiff.processes.autoregressive import objectives
from ardiff.processes.autoregressive.transformer_process import TransformerProcess


def prefix_inputs(x: jax.Array, t: jax.Array, mask_id: int) -> jax.Array:
  """x [B, L] with positions >= t[b] replaced by mask_id (t int [B], or a scalar)."""
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), x.shape[:1])
  return jnp.where(jnp.arange(x.shape[1])[None, :] < t[:, None], x, mask_id)


def step_nll(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array, t: jax.Array,
             mask_id: int) -> jax.Array:
  """-log p(x_t | x_<t, y) per example, [B] nats (t int [B] in 0..L-1, or a scalar)."""
  b = x.shape[0]
  t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
  logits = logits_fn(prefix_inputs(x, t, mask_id), y)  # [B, L, V]
  at_t = jnp.take_along_axis(logits, t[:, None, None], axis=1)[:, 0]  # [B, V]
  return categorical.token_nll(at_t, x[jnp.arange(b), t])


def one_step_loss(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
                  mask_id: int) -> jax.Array:
  """L * -log p(x_t | x_<t, y) with t ~ U{0..L-1} per example: [B] nats, unbiased for the NLL."""
  b, length = x.shape
  t = jax.random.randint(key, (b,), 0, length)
  return length * step_nll(logits_fn, x, y, t, mask_id)


def exact_nll(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
              mask_id: int) -> jax.Array:
  """sum_t -log p(x_t | x_<t, y): the exact raster NLL, [B] nats (L network calls, a scan)."""
  def body(total, t):
    return total + step_nll(logits_fn, x, y, t, mask_id), None

  total, _ = jax.lax.scan(body, jnp.zeros(x.shape[0], jnp.float32), jnp.arange(x.shape[1]))
  return total


class RasterBidirectional(TransformerProcess):
  """Raster order, bidirectional `Transformer` with a mask token; loss: one step per example."""

  causal = False
  _nll_key, _bpd_key = "nll", "bpd"  # one-sample unbiased estimates of the exact NLL
  provides = ("next_pixel",)  # trained on raster prefixes only

  def _nll(self, logits_fn, x, y, key):
    return one_step_loss(logits_fn, x, y, key, self.model.mask_id)

  def exact_nll(self, params, x, y) -> jax.Array:
    """Exact NLL [B] nats of tokens x [B, L] with labels y [B] (L network calls; no dropout)."""
    return exact_nll(lambda t, lab: self.model.apply(params, t, lab), jnp.asarray(x, jnp.int32),
                     jnp.asarray(y, jnp.int32), self.model.mask_id)

  def nll_bound(self, params, batch, key):
    """Exact -log2 p(x | y) / L per example, [B] bits per dimension (L network calls; `key`
    unused)."""
    x, y = self._inputs(batch)
    return objectives.nats_to_bpd(self.exact_nll(params, x, y), self.seq_len)

