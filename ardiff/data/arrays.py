"""A user's own data from a .npz file (README "Your own data").

  x       float points [N, D], or integer images [N, H, W, C] of levels in [0, L)   (required)
  y       integer class ids [N] in [0, num_classes)                       (optional: one class)
  levels  integer scalar L in 2..256, the number of grey levels of images  (optional: max + 1)

Everything is checked on load (`ardiff.data.checks`): finite points, levels within [0, L) (no
silent wrap into uint8), labels within [0, num_classes), one label per example. Errors are
`DataError`s naming the file and the field. The dataset is named after the file and a hash of
its contents, so models trained on two different files never share a cache entry.
"""

from __future__ import annotations

import hashlib
import os
import zipfile

import numpy as np

from ardiff.data.base import Dataset
from ardiff.data.checks import (MAX_LEVELS, check_images, check_labels, check_num_levels,
                                check_points, fail)


def _read(path: str, source: str) -> dict[str, np.ndarray]:
  if not os.path.isfile(path):
    fail(source, "does not exist" if not os.path.exists(path) else "is not a file")
  try:
    archive = np.load(path, allow_pickle=False)  # never unpickle a data file
  except (ValueError, OSError, EOFError, zipfile.BadZipFile):
    fail(source, "is not an .npz archive (numpy.savez writes one)")
  if not isinstance(archive, np.lib.npyio.NpzFile):
    fail(source, "is a single .npy array, not an .npz archive (numpy.savez writes one)")
  with archive:
    try:
      return {k: archive[k] for k in archive.files}
    except ValueError as e:  # object arrays need pickle
      fail(source, f"holds an array that is not plain numbers ({e})")


def _levels(arrays: dict, x: np.ndarray, source: str) -> int:
  """The file's `levels` scalar, else its largest value + 1 (capped at 256: larger values are
  then reported by the level check rather than wrapped into uint8)."""
  if "levels" in arrays:
    value = arrays["levels"]
    if value.shape != () or not np.issubdtype(value.dtype, np.integer):
      fail(source, f"field 'levels' must be an integer scalar in 2..{MAX_LEVELS}, got "
                   f"{value.dtype} of shape {value.shape}")
    return check_num_levels(source, "field 'levels'", int(value))
  if not x.size or not np.issubdtype(x.dtype, np.integer):
    return 2  # the image check names the problem
  return min(max(int(x.max()) + 1, 2), MAX_LEVELS)


def load_npz_dataset(path: str, test_fraction: float = 0.1, num_levels: int | None = None,
                     seed: int = 0) -> Dataset:
  """Load and check `x`, `y` and `levels` from `path`; split off a seeded test fraction.

  Rank-2 float arrays are points; rank-4 integer arrays are images of `num_levels` levels
  (default: the file's `levels`, else its largest value + 1). Labels default to one class.
  Raises DataError naming the file and the field.
  """
  source = f"data file {path}"
  if not 0.0 < test_fraction < 1.0:
    fail(source, f"test_fraction must lie in (0, 1), got {test_fraction}")
  arrays = _read(path, source)
  if "x" not in arrays:
    fail(source, f"expected an array named 'x' (points [N, D] or images [N, H, W, C]), found "
                 f"{sorted(arrays)}")
  x = arrays["x"]
  if x.ndim == 4:
    kind = "image"
    levels = num_levels if num_levels is not None else _levels(arrays, x, source)
    check_images(source, "x", x, check_num_levels(source, "levels", levels))
    x = x.astype(np.uint8)
  elif x.ndim == 2:
    kind, levels = "points", None
    check_points(source, "x", x)
    x = x.astype(np.float32)
  else:
    fail(source, f"field 'x' must hold float points [N, D] or integer images [N, H, W, C], got "
                 f"dtype {x.dtype} shape {x.shape}")
  if len(x) < 2:
    fail(source, f"field 'x' has {len(x)} example(s); at least 2 are needed (one to train on, "
                 "one held out)")
  if "y" in arrays:
    y = arrays["y"]
    integer = y.size and np.issubdtype(y.dtype, np.integer)
    num_classes = max(int(y.max()) + 1, 1) if integer else 1
    check_labels(source, "y", y, len(x), num_classes)
    y = y.astype(np.int32)
  else:
    y, num_classes = np.zeros(len(x), np.int32), 1
  perm = np.random.default_rng(seed).permutation(len(x))
  n_test = min(len(x) - 1, max(1, int(round(test_fraction * len(x)))))
  test, train = perm[:n_test], perm[n_test:]
  stem = os.path.splitext(os.path.basename(path))[0]
  digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:8]
  return Dataset(f"{stem}-{digest}", kind, x[train], y[train], x[test], y[test],
                 num_classes=num_classes, num_levels=levels)
