"""A noise-aware image classifier p(y | x_t, u) for classifier guidance of diffusion models.

``NoisyClassifierNet(num_classes).apply(params, x, u)`` with x float [B, H, W, C] (the
diffusion's model space: [-1, 1] images, noised) and u float [B] in [0, 1] (the diffusion time,
u = t / T on the training grid) returns logits [B, num_classes].

The trunk is the feature classifier's (``ardiff.models.classifier.Classifier``: conv, two
stride-2 convs, dense), with the time told to every layer: a sinusoidal embedding of u
(``ardiff.models.embeddings.sinusoidal_embedding``, the denoisers' one) through an MLP, projected
and added to each layer's pre-activation. No normalisation across the batch, so every example's
logits depend on that example alone (classifier guidance takes per-example gradients through
the sum of log-probabilities over the batch). Trained by
``ardiff.processes.gaussian.classifier_guidance.NoisyClassifier``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ardiff.models.embeddings import sinusoidal_embedding


class NoisyClassifierNet(nn.Module):
  """conv(w0) -> conv(w1, stride 2) -> conv(w1, stride 2) -> dense(feature_dim) -> logits, each
  hidden layer + a projection of the time embedding, SiLU."""

  num_classes: int
  widths: tuple[int, int] = (32, 64)
  feature_dim: int = 64
  time_dim: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, u: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"x must be [B, H, W, C], got shape {x.shape}")
    if u.shape != (x.shape[0],):
      raise ValueError(f"u must be [B] = [{x.shape[0]}], got shape {u.shape}")
    emb = sinusoidal_embedding(u, self.time_dim)
    emb = nn.silu(nn.Dense(self.time_dim)(nn.silu(nn.Dense(self.time_dim)(emb))))

    def plus_time(h, channels):
      shift = nn.Dense(channels)(emb)
      return h + shift.reshape(shift.shape[0], *([1] * (h.ndim - 2)), channels)

    h = x.astype(jnp.float32)
    for width, stride in ((self.widths[0], 1), (self.widths[1], 2), (self.widths[1], 2)):
      h = nn.silu(plus_time(nn.Conv(width, (3, 3), strides=(stride, stride))(h), width))
    h = h.reshape(h.shape[0], -1)
    h = nn.silu(plus_time(nn.Dense(self.feature_dim)(h), self.feature_dim))
    return nn.Dense(self.num_classes)(h)
