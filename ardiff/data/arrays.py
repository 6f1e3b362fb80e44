"""A user's own data from a .npz file: `x` (points [N, D] or images [N, H, W, C]) and optional `y`."""

from __future__ import annotations

import os

import numpy as np

from ardiff.data.base import Dataset


def load_npz_dataset(path: str, test_fraction: float = 0.1, num_levels: int | None = None,
                     seed: int = 0) -> Dataset:
  """Load `x` (and `y` if present) from `path` and split off a seeded test fraction.

  Float arrays of rank 2 are points. Integer arrays of rank 4 are images of `num_levels` grey
  levels (default: max value + 1). Labels default to a single class.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"data.path={path!r} does not exist")
  with np.load(path) as f:
    if "x" not in f:
      raise ValueError(f"{path}: expected an array named 'x', found {sorted(f.files)}")
    x = f["x"]
    y = f["y"].astype(np.int32) if "y" in f else np.zeros(len(x), np.int32)
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
  if x.ndim == 2:
    kind, x, levels = "points", x.astype(np.float32), None
  elif x.ndim == 4 and np.issubdtype(x.dtype, np.integer):
    kind = "image"
    levels = int(x.max()) + 1 if num_levels is None else num_levels
    if x.min() < 0:
      raise ValueError(f"{path}: image levels must be >= 0, found {x.min()}")
    x = x.astype(np.uint8)
  else:
    raise ValueError(
        f"{path}: 'x' must be float points [N, D] or integer images [N, H, W, C], "
        f"got dtype {x.dtype} shape {x.shape}")
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = max(1, int(round(test_fraction * len(x))))
  test, train = perm[:n_test], perm[n_test:]
  num_classes = int(y.max()) + 1 if len(y) else 1
  return Dataset(os.path.basename(path), kind, x[train], y[train], x[test], y[test],
                 num_classes=num_classes, num_levels=levels)
