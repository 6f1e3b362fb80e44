"""scikit-learn's 8x8 handwritten digits: 1797 images, 17 grey levels (0..16), 10 classes.

Ships with scikit-learn, so it needs no download. The split is fixed: a seeded permutation
(seed 0) with the last 297 images as the test split (1500 train / 297 test).
"""

from __future__ import annotations

import numpy as np

from ardiff.data.base import Dataset

NUM_TEST = 297


def load_digits_dataset() -> Dataset:
  from sklearn.datasets import load_digits

  bunch = load_digits()
  x = bunch.images.astype(np.uint8)[..., None]  # [1797, 8, 8, 1], values 0..16
  y = bunch.target.astype(np.int32)
  perm = np.random.default_rng(0).permutation(len(x))
  x, y = x[perm], y[perm]
  return Dataset(
      name="digits", kind="image",
      x_train=x[:-NUM_TEST], y_train=y[:-NUM_TEST],
      x_test=x[-NUM_TEST:], y_test=y[-NUM_TEST:],
      num_classes=10, num_levels=17)
