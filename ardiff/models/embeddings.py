"""Embeddings shared by the denoisers: sinusoidal time features and labels with a null class."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_embedding(t: jnp.ndarray, dim: int, max_period: float = 10_000.0) -> jnp.ndarray:
  """Features of a continuous time t in [0, 1] ([B] -> [B, dim]); t is scaled by 1000 first so
  that neighbouring timesteps of a T=1000 chain get distinguishable features.

  With half = dim // 2 and frequencies f_i = max_period ** (-i / half), i < half:
  ``[sin(1000 t f_0), ..., sin(1000 t f_{half-1}), cos(1000 t f_0), ..., cos(1000 t f_{half-1})]``,
  plus a zero column when dim is odd. Computed in float32 whatever t's dtype. The one time
  embedding of the project (the MLP and the UNet denoisers both use it).
  """
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (1000.0 * t.astype(jnp.float32))[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class LabelEmbedding(nn.Module):
  """Embeds labels 0..num_classes-1 plus the null label num_classes (classifier-free guidance)."""

  num_classes: int
  features: int
  dtype: Any = jnp.float32  # compute dtype of the looked-up rows; the table stays float32

  @nn.compact
  def __call__(self, y: jnp.ndarray) -> jnp.ndarray:
    return nn.Embed(self.num_classes + 1, self.features, dtype=self.dtype, name="table")(y)
