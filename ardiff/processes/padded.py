"""Step counts as data: per-step arrays padded to a bucket, so that one program runs many counts.

A compiled loop whose inputs have one row per step (a diffusion time grid with N + 1 entries,
an ARDM plan [S, L]) is a new XLA program for every N, because N is a shape. Padding the rows
to a bucket and passing N as an int32 scalar makes N data: the loop runs a traced trip count
(`lax.fori_loop` with a traced bound lowers to a while loop) and never reads the padding.

Buckets are powers of two, at least MIN_BUCKET rows, so every count up to MIN_BUCKET shares one
program (`ddim:8` ... `ddim:1000`: grids of 9 ... 1001 times in 1024 rows) and larger counts
add one program per doubling. The padding costs MIN_BUCKET rows of host-to-device copy per
call (4 KiB for a float32 grid), not compute: the loop stops at N.
"""

from __future__ import annotations

import numpy as np

MIN_BUCKET = 1024


def bucket(rows: int, minimum: int = MIN_BUCKET) -> int:
  """The padded length for `rows` rows: the smallest power of two >= max(rows, minimum)."""
  if rows < 1:
    raise ValueError(f"rows must be positive, got {rows}")
  return 1 << (max(int(rows), int(minimum)) - 1).bit_length()


def pad_rows(values, length: int | None = None, minimum: int = MIN_BUCKET) -> np.ndarray:
  """`values` [n, ...] padded along axis 0 to `length` (default: its bucket) by repeating the
  last row. A loop over the first n rows reads exactly what it read unpadded."""
  values = np.asarray(values)
  n = values.shape[0]
  length = bucket(n, minimum) if length is None else length
  if length < n:
    raise ValueError(f"cannot pad {n} rows to {length}")
  tail = np.repeat(values[-1:], length - n, axis=0)
  return np.concatenate([values, tail], axis=0)
