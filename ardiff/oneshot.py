"""One-shot regression: predict every pixel at once from the label alone, trained with MSE.

The opposite extreme of a removal process: everything is removed in a single step and the
network must put it all back in one prediction. With squared error the optimum for an input
y is E[x | y], so from the null label ("from nothing") the network can only learn the data
mean, and from a class label the class mean: a blurry average, never a sample. The model is
deterministic; `sample` returns the same image for every draw with the same label.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

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


@dataclasses.dataclass(frozen=True)
class OneShotRegression:
  """A `Process`: x [B, *shape] floats in [-1, 1] regressed from y with mean squared error.

  Labels are dropped to the null label with probability `p_uncond` during training, so the
  same network answers "from nothing" (null label: the data mean) and "from the class".
  """

  num_classes: int
  shape: tuple[int, ...]
  width: int = 128
  depth: int = 2
  p_uncond: float = 0.1

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
    if not self.shape or any(s < 1 for s in self.shape):
      raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {self.shape}")
    if not 0.0 <= self.p_uncond <= 1.0:
      raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")
    if self.width < 1 or self.depth < 0:
      raise ValueError(f"width must be >= 1 and depth >= 0, got width={self.width}, "
                       f"depth={self.depth}")

  @property
  def null_label(self) -> int:
    return self.num_classes

  @property
  def model(self) -> LabelToImageMLP:
    return LabelToImageMLP(self.num_classes, math.prod(self.shape), self.width, self.depth)

  def init_params(self, key, batch):
    return self.model.init(key, jnp.asarray(batch["y"], jnp.int32))

  def _raw(self, params, y):
    y = jnp.asarray(y, jnp.int32)
    return self.model.apply(params, y).reshape(y.shape[0], *self.shape)

  def loss(self, params, batch, key, train=True):
    x, y = batch["x"], jnp.asarray(batch["y"], jnp.int32)
    if train and self.p_uncond > 0:
      y = jnp.where(jax.random.bernoulli(key, self.p_uncond, y.shape), self.null_label, y)
    loss = jnp.mean((self._raw(params, y) - x) ** 2)
    return loss, {"loss": loss}

  def predict(self, params, y) -> jax.Array:
    """The prediction for labels y [B], clipped to the data range [-1, 1]: [B, *shape]."""
    return jnp.clip(self._raw(params, y), -1.0, 1.0)

  def sample(self, params, num_samples: int, labels=None) -> jax.Array:
    """`num_samples` predictions (labels=None: the null label). No randomness: same y, same x."""
    if labels is None:
      labels = jnp.full((num_samples,), self.null_label, jnp.int32)
    labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (num_samples,))
    return self.predict(params, labels)
