"""A 2-D spiral with one arm per class: the embedded toy dataset, no download needed."""

from __future__ import annotations

import numpy as np

from ardiff.data.base import Dataset


def spiral_points(n: int, num_classes: int = 3, noise: float = 0.04, turns: float = 1.0,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """n points on `num_classes` interleaved spiral arms, scaled to roughly [-1, 1]^2.

  Arm c is rotated by 2*pi*c/num_classes; radius grows linearly with angle; isotropic Gaussian
  noise of std `noise` is added. Returns (points float32 [n, 2], labels int32 [n]).
  """
  if n <= 0 or num_classes <= 0:
    raise ValueError(f"spiral needs n > 0 and num_classes > 0, got n={n}, num_classes={num_classes}")
  if noise < 0:
    raise ValueError(f"spiral noise must be >= 0, got {noise}")
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=n)
  s = np.sqrt(rng.uniform(0.0, 1.0, size=n))  # sqrt: uniform density along the arm's length
  angle = 2 * np.pi * turns * s + 2 * np.pi * labels / num_classes
  radius = 0.15 + 0.85 * s
  pts = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
  pts += noise * rng.standard_normal(pts.shape)
  return pts.astype(np.float32), labels.astype(np.int32)


def spiral_dataset(num_train: int = 20_000, num_test: int = 4_000, num_classes: int = 3,
                   noise: float = 0.04, seed: int = 0) -> Dataset:
  x, y = spiral_points(num_train + num_test, num_classes, noise, seed=seed)
  return Dataset("spiral", "points", x[:num_train], y[:num_train], x[num_train:], y[num_train:],
                 num_classes=num_classes)
