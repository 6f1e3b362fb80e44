"""Autoregressive removal processes: raster AR and order-agnostic AR (ARDM).

Both implement :class:`ardiff.process.Process`. A batch is ``{"x": int tokens [B, L] (or
[B, ...] with L entries, flattened in raster order), "y": int32 labels [B]}``. With
``train=True`` labels are dropped to the null label ``num_classes`` with probability
``p_uncond`` (classifier-free guidance) and dropout is active.

Losses are in nats per token (NLL / L), so both processes train on the same scale; the
metrics report bits per dimension, ``bpd = NLL / (L ln 2)``.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from ardiff.autoregressive import objectives, orders, sampling
from ardiff.models.transformer import Transformer
from ardiff.process import Batch, Params


class _TransformerProcess:
  """Shared construction, input handling, label dropping and the loss around `_nll`."""

  causal: bool
  _nll_key: str  # metric name of the per-example NLL (nats)
  _bpd_key: str  # metric name of the same in bits per dimension

  def __init__(
      self, vocab_size: int, seq_len: int, num_classes: int, width: int = 128, depth: int = 4,
      heads: int = 4, dropout: float = 0.0, p_uncond: float = 0.1, mlp_ratio: int = 4,
      dtype: Any = jnp.float32, remat: bool = False,
  ):
    if not 0.0 <= p_uncond <= 1.0:
      raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    for name, value in (("vocab_size", vocab_size), ("seq_len", seq_len),
                        ("num_classes", num_classes)):
      if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    self.vocab_size, self.seq_len, self.num_classes = vocab_size, seq_len, num_classes
    self.p_uncond = p_uncond
    self.model = Transformer(
        vocab_size=vocab_size, seq_len=seq_len, num_classes=num_classes, width=width,
        depth=depth, heads=heads, mlp_ratio=mlp_ratio, dropout=dropout, causal=self.causal,
        dtype=dtype, remat=remat)

  def _inputs(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    x, y = batch["x"], batch["y"]
    x = jnp.asarray(x).reshape(x.shape[0], -1)
    if x.shape[1] != self.seq_len:
      raise ValueError(f"batch['x'] must hold seq_len={self.seq_len} tokens per example, "
                       f"got shape {batch['x'].shape}")
    return x.astype(jnp.int32), jnp.asarray(y, jnp.int32)

  def init_params(self, key: jax.Array, batch: Batch) -> Params:
    x, y = self._inputs(batch)
    return jax.jit(self.model.init)(key, x[:1], y[:1])

  def _logits_fn(self, params: Params, key: jax.Array, train: bool) -> objectives.LogitsFn:
    rngs = {"dropout": key} if train else None
    return lambda tokens, y: self.model.apply(params, tokens, y, train=train, rngs=rngs)

  def _drop_labels(self, key: jax.Array, y: jax.Array) -> jax.Array:
    drop = jax.random.bernoulli(key, self.p_uncond, y.shape)
    return jnp.where(drop, self.num_classes, y)

  def _nll(self, logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
           key: jax.Array) -> jax.Array:
    """Per-example NLL (or bound) in nats, [B]."""
    raise NotImplementedError

  def loss(
      self, params: Params, batch: Batch, key: jax.Array, train: bool = True
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean NLL in nats per token; metrics: nats per example and bits per dimension."""
    x, y = self._inputs(batch)
    k_drop, k_dropout, k_nll = jax.random.split(key, 3)
    if train:
      y = self._drop_labels(k_drop, y)
    nll = self._nll(self._logits_fn(params, k_dropout, train), x, y, k_nll).mean()
    metrics = {self._nll_key: nll, self._bpd_key: objectives.nats_to_bpd(nll, self.seq_len)}
    return nll / self.seq_len, metrics


class RasterAR(_TransformerProcess):
  """Raster-order autoregression with a causal transformer; exact likelihood."""

  causal = True
  _nll_key, _bpd_key = "nll", "bpd"  # exact NLL, nats per example and bits per dimension

  def _nll(self, logits_fn, x, y, key):
    return objectives.raster_nll(logits_fn(x, y), x)

  def sample(
      self, params: Params, key: jax.Array, y: jax.Array, *, temperature: float = 1.0,
      guidance: float | None = None, neg_y: jax.Array | None = None, use_cache: bool = True,
  ) -> jax.Array:
    """int32 tokens [B, L]; see :func:`ardiff.autoregressive.sampling.raster_sample`."""
    return sampling.raster_sample(self.model, params, key, y, temperature=temperature,
                                  guidance=guidance, neg_y=neg_y, use_cache=use_cache)


class OrderAgnosticAR(_TransformerProcess):
  """Order-agnostic ARDM with a bidirectional transformer; loss is the one-sample ARDM bound."""

  causal = False
  _nll_key, _bpd_key = "bound", "bound_bpd"  # one-sample ARDM estimate of the NLL bound

  def _nll(self, logits_fn, x, y, key):
    return objectives.ardm_loss(logits_fn, x, y, key, self.model.mask_id)

  def sample(
      self, params: Params, key: jax.Array, y: jax.Array, *, plan: jax.Array | None = None,
      k: int | None = None, step_sizes: Sequence[int] | None = None, random_order: bool = True,
      temperature: float = 1.0, guidance: float | None = None, neg_y: jax.Array | None = None,
      known_mask: jax.Array | None = None, known_tokens: jax.Array | None = None,
  ) -> jax.Array:
    """int32 tokens [B, L] by parallel decoding.

    Give a plan, or k (positions per step) / step_sizes to build one: random positions per
    example (random_order=True) or raster chunks, over the unknown positions when known_mask
    is given. Without any of them, k = 1 (one position per step, L model calls).
    See :func:`ardiff.autoregressive.sampling.order_agnostic_sample`.
    """
    y = jnp.asarray(y, jnp.int32)
    k_plan, k_sample = jax.random.split(key)
    if plan is None:
      if k is None and step_sizes is None:
        k = 1
      b = y.shape[0]
      mask = (jnp.zeros((b, self.seq_len), bool) if known_mask is None
              else jnp.broadcast_to(jnp.asarray(known_mask, bool), (b, self.seq_len)))
      plan = orders.inpainting_plan(k_plan if random_order else None, mask, k, step_sizes)
    return sampling.order_agnostic_sample(
        self.model, params, k_sample, y, plan, temperature=temperature, guidance=guidance,
        neg_y=neg_y, known_mask=known_mask, known_tokens=known_tokens)
