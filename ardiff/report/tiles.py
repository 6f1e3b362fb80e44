"""Images side by side in one array (numpy only: figures and TensorBoard grids share it)."""

from __future__ import annotations

import numpy as np


def tile_images(images: np.ndarray, per_row: int, fill: float = 0.0) -> np.ndarray:
  """[rows (H + 1) + 1, per_row (W + 1) + 1, C] float32: `images` [N, H, W, C] in rows of
  `per_row`, row-major, with a one-pixel border of `fill` around and between them."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  rows = -(-n // per_row)
  canvas = np.full((rows * (h + 1) + 1, per_row * (w + 1) + 1, c), fill, np.float32)
  for i in range(n):
    r, col = divmod(i, per_row)
    canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = images[i]
  return canvas
