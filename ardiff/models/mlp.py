"""A residual MLP denoiser for low-dimensional data (the 2-D spiral)."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from ardiff.models.embeddings import LabelEmbedding, sinusoidal_embedding


class MLPDenoiser(nn.Module):
  """f(x, t, y) -> same shape as x. x: [B, D] float, t: [B] in [0, 1], y: [B] int (null = C)."""

  num_classes: int
  width: int = 256
  depth: int = 4
  time_features: int = 64

  @nn.compact
  def __call__(self, x, t, y, train: bool = False):
    del train  # no dropout: kept for the common denoiser signature
    if x.ndim != 2:
      raise ValueError(f"MLPDenoiser expects x of shape [batch, dim], got {x.shape}")
    cond = nn.Dense(self.width)(sinusoidal_embedding(t, self.time_features))
    cond = cond + LabelEmbedding(self.num_classes, self.width)(y)
    h = nn.Dense(self.width)(x)
    for _ in range(self.depth):
      # Each block sees the conditioning, so time and class act at every depth.
      r = nn.LayerNorm()(h)
      r = nn.Dense(self.width)(nn.silu(r + cond))
      r = nn.Dense(self.width)(nn.silu(r))
      h = h + r
    return nn.Dense(x.shape[-1])(nn.silu(nn.LayerNorm()(h)))
