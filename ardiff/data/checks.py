"""Checks of data arrays, each raising `DataError` naming where the data came from (`source`:
"data file points.npz" or "dataset 'digits'"), the field, the first bad index, and what is
allowed. Used by every loader (`Dataset` itself, npz files, tfds) so that nothing wraps,
overflows or trains to NaN silently."""

from __future__ import annotations

import numpy as np

from ardiff.errors import DataError

MAX_LEVELS = 256  # images are stored as uint8


def fail(source: str, message: str) -> None:
  raise DataError(f"{source}: {message}")


def _first(bad: np.ndarray) -> int:
  """Index (along the first axis) of the first example with a bad entry."""
  return int(np.argmax(bad.reshape(len(bad), -1).any(axis=1)))


def check_num_levels(source: str, field: str, num_levels) -> int:
  if (not isinstance(num_levels, (int, np.integer)) or isinstance(num_levels, bool)
      or not 2 <= num_levels <= MAX_LEVELS):
    fail(source, f"{field} must be an integer in 2..{MAX_LEVELS} (images are stored as uint8), "
                 f"got {num_levels!r}")
  return int(num_levels)


def check_images(source: str, field: str, x: np.ndarray, num_levels: int) -> None:
  """Integer levels [N, H, W, C] in [0, num_levels)."""
  if x.ndim != 4:
    fail(source, f"field {field!r} must hold images [N, H, W, C], got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.integer):
    fail(source, f"field {field!r} must hold integer levels, got dtype {x.dtype}")
  bad = (x < 0) | (x >= num_levels)
  if bad.any():
    i = _first(bad)
    value = x[i][bad[i]].flat[0]
    fail(source, f"field {field!r} has level {value} at index {i}; levels must lie in "
                 f"[0, {num_levels})")


def check_points(source: str, field: str, x: np.ndarray) -> None:
  """Finite floats [N, D]."""
  if x.ndim != 2:
    fail(source, f"field {field!r} must hold points [N, D], got shape {x.shape}")
  if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
    fail(source, f"field {field!r} must hold real numbers, got dtype {x.dtype}")
  bad = ~np.isfinite(x)
  if bad.any():
    fail(source, f"field {field!r} is not finite at index {_first(bad)} (NaN or inf)")


def check_labels(source: str, field: str, y: np.ndarray, n: int, num_classes: int) -> None:
  """Integer class ids [n] in [0, num_classes) (-1 is not 'unlabelled': it is an error)."""
  if y.ndim != 1:
    fail(source, f"field {field!r} must hold one label per example, shape [N], got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    fail(source, f"field {field!r} must hold integer class ids, got dtype {y.dtype}")
  if len(y) != n:
    fail(source, f"field {field!r} has {len(y)} labels for {n} examples")
  bad = (y < 0) | (y >= num_classes)
  if bad.any():
    i = int(np.argmax(bad))
    fail(source, f"field {field!r} has label {y[i]} at index {i}; labels must lie in "
                 f"[0, {num_classes})")


def check_batch(source: str, num_train: int, batch_size: int, key: str = "train.batch_size") -> None:
  """A batch must not repeat examples within one step: at least batch_size training examples."""
  if num_train < batch_size:
    fail(source, f"has {num_train} training examples, fewer than {key.split('.')[-1]} "
                 f"{batch_size} ({key}); lower {key} or use more data")
