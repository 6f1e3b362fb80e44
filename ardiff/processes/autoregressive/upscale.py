"""Coarse-to-fine ("upscale") order-agnostic autoregression (the upscale ARDM of Hoogeboom et
al. 2021, section 4): pixels are generated in S stages of increasing precision, each stage an
order-agnostic ARDM over the D pixels.

Stages. Pixel values v lie in 0..L-1. Nested divisors d_0 > d_1 > ... > d_{S-1} = 1, each a
multiple of the next: stage s reveals each pixel's value at precision d_s, b = v // d_s (for
L = 17 and divisors (4, 1): stage 0 reveals one of 5 bins {0-3}, {4-7}, {8-11}, {12-15}, {16},
stage 1 the value itself). Before stage 0 every pixel is hidden. Because the divisors are
nested, v // d_{s-1} is a function of v // d_s: a later stage refines, never contradicts.

Network input: each pixel's state as one token id, the mask id M when hidden, else
offset_s + v // d_s for the last stage s it reached, the offsets laid out consecutively
(offset_0 = 0, offset_{s+1} = offset_s + n_s with n_s = ceil(L / d_s) bins), M = sum_s n_s;
the transformer embeds M + 1 input ids (`Transformer.input_vocab_size`) and outputs logits over
the L full values.

Conditionals. For a pixel at coarse value a = v // d_{s-1} (all values at stage 0) the network's
softmax over the L values is restricted to A = {v : v // d_{s-1} = a} and renormalised; the
stage-s value b has probability

  p_s(b | state) = sum_{v in A, v // d_s = b} exp(l_v) / sum_{v in A} exp(l_v),

computed in float32 as a difference of two log-sum-exps.

Bound. Stage s is an ARDM over the pixels given the whole image at stage s - 1; by the chain rule
over stages,

  -log p(x) <= sum_s E_sigma [ sum_t -log p_s(x_{sigma(t)} // d_s | stage-s state at t) ],

each term the ARDM bound of its stage. The loss is a one-sample estimate: s ~ U{0..S-1},
t ~ U{0..D-1}, sigma a random order; the pixels at order positions < t are at stage s, the
others at stage s - 1 (hidden for s = 0), and

  estimate = S * D / (D - t) * sum_{i: rank_i >= t} -log p_s(x_i // d_s | state),

whose expectation is the bound above (nats per example; bits per pixel = bound / (D ln 2)).

Sampler `upscale` (`ardiff.processes.token_samplers.upscale`; options k=1, temperature=1.0):
per stage a random order per example, k pixels per step; each step draws the revealed pixels'
value at the stage's precision with the law p_s. S * ceil(D / k) network calls.
`UpscaleAR.nll_bound` gives the bound on held-out data by the exact chain rule along one random
order per stage per image (S * D network calls; `ardiff.metrics.held_out.test_bpd` averages it
over a test set).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.models.transformer import Transformer
from ardiff.processes.autoregressive import objectives, orders
from ardiff.processes.autoregressive.transformer_process import TransformerProcess

DEFAULT_DIVISORS = (4, 1)


class Stages:
  """The stage layout for L levels and nested divisors: bins, offsets and the mask id."""

  def __init__(self, levels: int, divisors: Sequence[int] = DEFAULT_DIVISORS):
    divisors = tuple(divisors) if isinstance(divisors, (tuple, list)) else (divisors,)
    if (not divisors or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                                and d >= 1 for d in divisors)):
      raise ValueError(f"divisors must be a non-empty list of positive ints, got {divisors!r}")
    if divisors[-1] != 1 or any(a % b or a == b for a, b in zip(divisors, divisors[1:])):
      raise ValueError("divisors must decrease, each a multiple of the next, and end with 1, "
                       f"got {list(divisors)}")
    if levels < 1:
      raise ValueError(f"levels must be >= 1, got {levels}")
    self.levels = int(levels)
    self.divisors = tuple(int(d) for d in divisors)
    self.bins = tuple((self.levels - 1) // d + 1 for d in self.divisors)  # ceil(L / d)
    self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.bins[:-1]))
    self.mask_id = sum(self.bins)
    self.input_vocab_size = self.mask_id + 1

  @property
  def num_stages(self) -> int:
    return len(self.divisors)

  def tokens(self, values: jax.Array, stage: jax.Array) -> jax.Array:
    """Input ids: mask where stage < 0, else offset_stage + values // d_stage. int32."""
    stage = jnp.asarray(stage, jnp.int32)
    c = jnp.clip(stage, 0, self.num_stages - 1)
    d = jnp.asarray(self.divisors, jnp.int32)[c]
    off = jnp.asarray(self.offsets, jnp.int32)[c]
    return jnp.where(stage < 0, self.mask_id, off + jnp.asarray(values, jnp.int32) // d)

  def representative(self, ids: jax.Array) -> jax.Array:
    """Input ids -> a value in each id's bin (the middle one, rounded down; exact at the last
    stage), the mask id where hidden: how a partly refined image is drawn."""
    ids = jnp.asarray(ids, jnp.int32)
    offsets = jnp.asarray(self.offsets, jnp.int32)
    stage = jnp.clip(jnp.searchsorted(offsets, ids, side="right") - 1, 0, self.num_stages - 1)
    d = jnp.asarray(self.divisors, jnp.int32)[stage]
    low = (ids - offsets[stage]) * d
    value = jnp.minimum(low + (d - 1) // 2, self.levels - 1)
    return jnp.where(ids == self.mask_id, self.mask_id, value)

  def allowed(self, values: jax.Array, stage: jax.Array) -> jax.Array:
    """bool [..., L]: the full values a pixel of value `values` may take when refined to
    `stage` (those sharing its value at precision d_{stage-1}; all of them at stage 0)."""
    prev = self._prev_divisor(stage)[..., None]
    v = jnp.arange(self.levels, dtype=jnp.int32)
    return v // prev == (jnp.asarray(values, jnp.int32) // prev[..., 0])[..., None]

  def _prev_divisor(self, stage):
    stage = jnp.asarray(stage, jnp.int32)
    table = jnp.asarray((self.levels,) + self.divisors[:-1], jnp.int32)  # d_{-1} = L: one bin
    return table[jnp.clip(stage, 0, self.num_stages - 1)]

  def stage_nll(self, logits: jax.Array, x: jax.Array, stage: jax.Array) -> jax.Array:
    """-log p_stage(x // d_stage | x // d_{stage-1}) per pixel: logits [..., L], x int [...],
    stage int broadcastable to x -> float32 [...] nats."""
    logits = logits.astype(jnp.float32)
    stage = jnp.broadcast_to(jnp.asarray(stage, jnp.int32), x.shape)
    d = jnp.asarray(self.divisors, jnp.int32)[stage][..., None]
    v = jnp.arange(self.levels, dtype=jnp.int32)
    allowed = self.allowed(x, stage)
    target = allowed & (v // d == (x[..., None] // d))
    return (jax.nn.logsumexp(jnp.where(allowed, logits, -jnp.inf), axis=-1)
            - jax.nn.logsumexp(jnp.where(target, logits, -jnp.inf), axis=-1))


def upscale_loss_given(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
                       stage: jax.Array, refined: jax.Array, layout: Stages) -> jax.Array:
  """The estimate for given stages s [B] and refined masks bool [B, D] (t = refined.sum < D):
  S * D / (D - t) * sum over the unrefined pixels of -log p_s. [B] nats."""
  s = jnp.asarray(stage, jnp.int32)[:, None]
  tokens = layout.tokens(x, jnp.where(refined, s, s - 1))
  nll = layout.stage_nll(logits_fn(tokens, y), x, s)
  todo = ~refined
  scale = layout.num_stages * x.shape[-1] / todo.sum(axis=-1)
  return scale * jnp.where(todo, nll, 0.0).sum(axis=-1)


def upscale_loss(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array,
                 layout: Stages) -> jax.Array:
  """One-sample estimate of the upscale ARDM bound per example: [B] nats."""
  k_s, k_reveal = jax.random.split(key)
  stage = jax.random.randint(k_s, (x.shape[0],), 0, layout.num_stages)
  refined = objectives.sample_revealed(k_reveal, x.shape[0], x.shape[-1])
  return upscale_loss_given(logits_fn, x, y, stage, refined, layout)


def upscale_order_nll(logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
                      stage_orders: jax.Array, layout: Stages) -> jax.Array:
  """Exact chain-rule NLL along one order per stage: stage_orders int [S, D] or [S, B, D].
  S * D model calls; [B] nats (an unbiased estimate of the bound for random orders)."""
  b, length = x.shape
  stage_orders = jnp.broadcast_to(jnp.asarray(stage_orders, jnp.int32).reshape(
      layout.num_stages, -1, length), (layout.num_stages, b, length))
  rows = jnp.arange(b)

  def body(total, st):
    s, t = st // length, st % length
    order = stage_orders[s]
    ranks = jnp.argsort(order, axis=-1)
    tokens = layout.tokens(x, jnp.where(ranks < t, s, s - 1))
    pos = order[:, t]
    logits = logits_fn(tokens, y)[rows, pos]
    return total + layout.stage_nll(logits, x[rows, pos], s), None

  total, _ = jax.lax.scan(body, jnp.zeros(b), jnp.arange(layout.num_stages * length))
  return total


class UpscaleAR(TransformerProcess):
  """Upscale ARDM with an injected bidirectional `Transformer` whose input_vocab_size is the
  layout's (`Stages(L, divisors).input_vocab_size`); the loss is the one-sample bound."""

  causal = False
  _nll_key, _bpd_key = "bound", "bound_bpd"
  provides = ("coarse_to_fine",)

  def __init__(self, model: Transformer, divisors: Sequence[int] = DEFAULT_DIVISORS,
               p_uncond: float = 0.1, data_shape: Sequence[int] | None = None):
    super().__init__(model, p_uncond=p_uncond, data_shape=data_shape)
    self.layout = Stages(model.vocab_size, divisors)
    if model.input_vocab_size != self.layout.input_vocab_size:
      raise ValueError(f"model: the upscale ARDM with divisors {list(self.layout.divisors)} "
                       f"needs input_vocab_size={self.layout.input_vocab_size}, got "
                       f"{model.input_vocab_size}")

  @property
  def mask_id(self) -> int:
    return self.layout.mask_id

  @property
  def divisors(self) -> tuple[int, ...]:
    return self.layout.divisors

  def _nll(self, logits_fn, x, y, key):
    return upscale_loss(logits_fn, x, y, key, self.layout)

  def nll_bound(self, params, batch, key):
    """The upscale bound, [B] bits per dimension: the exact chain rule along one random order
    per stage per example (stage s's order from fold_in(key, s); S * L network calls), summed
    over the stages and divided by L ln 2."""
    x, y = self._inputs(batch)
    stage_orders = jnp.stack([orders.random_orders(jax.random.fold_in(key, s), x.shape[0],
                                                   self.seq_len)
                              for s in range(self.layout.num_stages)])
    nll = upscale_order_nll(lambda t, lab: self.model.apply(params, t, lab), x, y, stage_orders,
                            self.layout)
    return objectives.nats_to_bpd(nll, self.seq_len)
