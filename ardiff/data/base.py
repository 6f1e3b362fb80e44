"""The data interface shared by every process: arrays in memory plus a stateless batch order."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled dataset held in host memory.

  kind == "points": x is float32 [N, D] (e.g. the 2-D spiral).
  kind == "image":  x is uint8 [N, H, W, C] holding integer grey levels 0..num_levels-1.
  Labels are int32 [N] in 0..num_classes-1 (all zeros and num_classes == 1 when unlabelled).
  """

  name: str
  kind: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  num_levels: int | None = None

  def __post_init__(self):
    if self.kind not in ("points", "image"):
      raise ValueError(f"dataset {self.name!r}: kind must be 'points' or 'image', got {self.kind!r}")
    for split in ("train", "test"):
      x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
      if len(x) != len(y):
        raise ValueError(
            f"dataset {self.name!r}: {split} split has {len(x)} examples but {len(y)} labels")
      if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
        raise ValueError(
            f"dataset {self.name!r}: {split} labels must lie in 0..{self.num_classes - 1}")
    if self.kind == "image":
      if self.x_train.ndim != 4:
        raise ValueError(
            f"dataset {self.name!r}: images must be [N, H, W, C], got shape {self.x_train.shape}")
      if self.num_levels is None or self.num_levels < 2:
        raise ValueError(f"dataset {self.name!r}: images need num_levels >= 2")
      if self.x_train.max() >= self.num_levels:
        raise ValueError(
            f"dataset {self.name!r}: pixel value {self.x_train.max()} >= num_levels {self.num_levels}")

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of one example."""
    return tuple(self.x_train.shape[1:])

  @property
  def description(self) -> str:
    """One line for result notes, e.g. 'digits 8x8x1, 17 levels, split 1500/297'."""
    size = "x".join(str(d) for d in self.shape)
    levels = f", {self.num_levels} levels" if self.num_levels else ""
    return f"{self.name} {size}{levels}, split {len(self.x_train)}/{len(self.x_test)}"

  @property
  def num_tokens(self) -> int:
    """Number of scalar positions per example (pixels x channels for images)."""
    return int(np.prod(self.shape))


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Indices of the examples in batch number `step`: a function of (seed, step) alone.

  Epoch e = step*batch_size // n uses the permutation drawn from (seed, e), so every example
  is seen once per epoch and a resumed run sees exactly the batches an uninterrupted run would.
  """
  if batch_size <= 0 or n <= 0:
    raise ValueError(f"batch_size and dataset size must be positive, got {batch_size}, {n}")
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out


def levels_to_unit(x: np.ndarray, num_levels: int) -> np.ndarray:
  """Integer grey levels 0..L-1 -> float32 in [-1, 1] (the level centres)."""
  return (x.astype(np.float32) / (num_levels - 1)) * 2.0 - 1.0


def unit_to_levels(x, num_levels: int):
  """Float in [-1, 1] -> nearest integer level 0..L-1 (works on numpy and jax arrays)."""
  import jax.numpy as jnp

  xp = jnp if not isinstance(x, np.ndarray) else np
  return xp.clip(xp.round((x + 1.0) / 2.0 * (num_levels - 1)), 0, num_levels - 1).astype(xp.int32)
