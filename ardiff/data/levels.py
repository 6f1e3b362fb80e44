"""Integer grey levels <-> the unit interval: a leaf module (numpy and jax only), so that every
process and metric can convert without importing another's helpers."""

from __future__ import annotations

import numpy as np


def levels_to_unit(x: np.ndarray, num_levels: int) -> np.ndarray:
  """Integer grey levels 0..L-1 -> float32 in [-1, 1] (the level centres)."""
  return (x.astype(np.float32) / (num_levels - 1)) * 2.0 - 1.0


def unit_to_level_scale(x, num_levels: int):
  """Float in [-1, 1] -> the level scale (x + 1) / 2 (L - 1) clipped to [0, L - 1], unrounded
  (numpy and jax arrays; `unit_to_levels` is its nearest integer)."""
  import jax.numpy as jnp

  xp = jnp if not isinstance(x, np.ndarray) else np
  return xp.clip((x + 1.0) / 2.0 * (num_levels - 1), 0, num_levels - 1)


def unit_to_levels(x, num_levels: int):
  """Float in [-1, 1] -> nearest integer level 0..L-1 (works on numpy and jax arrays)."""
  import jax.numpy as jnp

  xp = jnp if not isinstance(x, np.ndarray) else np
  return xp.round(unit_to_level_scale(x, num_levels)).astype(xp.int32)


def to_tokens(levels: np.ndarray) -> np.ndarray:
  """Integer images [N, H, W, C] -> int32 tokens [N, H*W*C] in raster order."""
  return np.asarray(levels).reshape(len(levels), -1).astype(np.int32)
