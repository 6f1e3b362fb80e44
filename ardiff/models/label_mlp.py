"""The one-shot regression network: a label in, a whole image out (no input image at all)."""

from __future__ import annotations

import flax.linen as nn
import jax

from ardiff.models.embeddings import LabelEmbedding


class LabelToImageMLP(nn.Module):
  """y [B] int (null = num_classes) -> [B, num_outputs] floats (unbounded)."""

  num_classes: int
  num_outputs: int
  width: int = 128
  depth: int = 2

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    h = LabelEmbedding(self.num_classes, self.width)(y)
    for _ in range(self.depth):
      h = nn.Dense(self.width)(nn.silu(h))
    return nn.Dense(self.num_outputs)(nn.silu(h))
