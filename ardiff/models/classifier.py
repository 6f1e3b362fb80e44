"""A small CNN image classifier whose penultimate layer serves as the feature space of the
sample-quality metric (Fréchet distance, class accuracy); see ``ardiff.metrics.sample_quality``.

``Classifier(num_classes).apply(params, x)`` with x float [B, H, W, C] in [-1, 1] returns
``(logits [B, num_classes], features [B, feature_dim])``. Works for any H, W >= 1: the two
stride-2 convs use SAME padding (8 -> 4 -> 2, 28 -> 14 -> 7, 32 -> 16 -> 8).
"""

from __future__ import annotations

import flax.linen as nn
import jax


class Classifier(nn.Module):
  """conv(w0) -> conv(w1, stride 2) -> conv(w1, stride 2) -> dense(feature_dim) -> logits.

  ReLU after every layer but the last; ``features`` is the post-ReLU penultimate layer.
  """

  num_classes: int
  widths: tuple[int, int] = (32, 64)
  feature_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
    h = nn.relu(nn.Conv(self.widths[0], (3, 3))(x))
    h = nn.relu(nn.Conv(self.widths[1], (3, 3), strides=(2, 2))(h))
    h = nn.relu(nn.Conv(self.widths[1], (3, 3), strides=(2, 2))(h))
    features = nn.relu(nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(features), features
