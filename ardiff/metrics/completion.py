"""Scoring image completion (inpainting): which pixels are hidden, and how far the completed
ones land from the truth.

`completion_masks` gives the two tasks the digits experiment sets: one hidden pixel (the
centre one, the source material's first example) and the whole lower half. A mask is True
where the pixel is known. `completion_scores` of completed levels `out` against the true levels
`x` [N, H, W, C]:

  mean_abs_level_error = mean over hidden pixels of |out - x|   (in grey levels)
  known_pixels_kept    = 1.0 if out == x at every known pixel, else 0.0

(a sampler that conditions correctly keeps the known pixels exactly: replacement inpainting
writes them back at every step).
"""

from __future__ import annotations

import numpy as np


def completion_masks(num: int, shape: tuple[int, ...]) -> list[np.ndarray]:
  """[one hidden centre pixel, the lower half hidden], each bool [num, *shape], True = known."""
  h, w = shape[0], shape[1]
  one = np.ones((num, *shape), bool)
  one[:, h // 2, w // 2] = False
  half = np.ones((num, *shape), bool)
  half[:, h // 2:] = False
  return [one, half]


def completion_scores(out: np.ndarray, x: np.ndarray, mask: np.ndarray) -> dict:
  """Error on the hidden pixels and whether the known ones were kept (see the module doc)."""
  out, x, mask = np.asarray(out), np.asarray(x), np.asarray(mask, bool)
  if not out.shape == x.shape == mask.shape:
    raise ValueError(f"out, x and mask must have one shape, got {out.shape}, {x.shape}, "
                     f"{mask.shape}")
  if mask.all():
    raise ValueError("mask hides no pixel: nothing to complete")
  error = np.abs(out.astype(np.int64) - x.astype(np.int64))
  return {"mean_abs_level_error": float(error[~mask].mean()),
          "known_pixels_kept": float(np.all(out[mask] == x[mask]))}
