"""A residual MLP denoiser for low-dimensional data (the 2-D spiral)."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ardiff.models.embeddings import LabelEmbedding, sinusoidal_embedding


class MLPDenoiser(nn.Module):
  """f(x, t, y) -> same shape as x. x: [B, D] float, t: [B] in [0, 1], y: [B] int (null = C).

  dtype: the compute dtype (e.g. bfloat16, see `ardiff.precision`); parameters stay float32 and
  the output is cast back to float32, so losses are computed in float32.
  """

  num_classes: int
  width: int = 256
  depth: int = 4
  time_features: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, t, y, train: bool = False):
    del train  # no dropout: kept for the common denoiser signature
    if x.ndim != 2:
      raise ValueError(f"MLPDenoiser expects x of shape [batch, dim], got {x.shape}")
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    norm = functools.partial(nn.LayerNorm, dtype=self.dtype)
    cond = dense(self.width)(sinusoidal_embedding(t, self.time_features))
    cond = cond + LabelEmbedding(self.num_classes, self.width, dtype=self.dtype)(y)
    h = dense(self.width)(x)
    for _ in range(self.depth):
      # Each block sees the conditioning, so time and class act at every depth.
      r = norm()(h)
      r = dense(self.width)(nn.silu(r + cond))
      r = dense(self.width)(nn.silu(r))
      h = h + r
    return dense(x.shape[-1])(nn.silu(norm()(h))).astype(jnp.float32)
