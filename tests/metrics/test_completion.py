"""Completion scores against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ardiff.metrics.completion import completion_masks, completion_scores


def test_masks_hide_the_centre_pixel_and_the_lower_half():
  one, half = completion_masks(2, (4, 6, 1))
  assert one.shape == half.shape == (2, 4, 6, 1)
  assert [tuple(p) for p in np.argwhere(~one[0])] == [(2, 3, 0)]  # row 4 // 2, column 6 // 2
  assert (~half[1]).sum() == 2 * 6 and not half[1, 2:].any() and half[1, :2].all()


def test_scores_count_hidden_pixels_only():
  x = np.zeros((1, 2, 2, 1), np.uint8)
  mask = np.array([True, True, False, False]).reshape(1, 2, 2, 1)
  out = np.array([0, 0, 3, 16], np.uint8).reshape(1, 2, 2, 1)
  # hidden pixels are off by 3 and 16 levels: mean 9.5; the known ones are kept
  assert completion_scores(out, x, mask) == {"mean_abs_level_error": 9.5,
                                             "known_pixels_kept": 1.0}
  # uint8 would wrap 0 - 3 to 253: the error is taken on integers
  assert completion_scores(x, out, mask)["mean_abs_level_error"] == 9.5
  out[0, 0, 0, 0] = 1  # a known pixel changed
  assert completion_scores(out, x, mask)["known_pixels_kept"] == 0.0
  assert completion_scores(out, x, mask)["mean_abs_level_error"] == 9.5


def test_bad_shapes_and_empty_masks_are_refused():
  x = np.zeros((1, 2, 2, 1), np.uint8)
  with pytest.raises(ValueError, match="one shape"):
    completion_scores(x[:, :1], x, np.ones_like(x, bool))
  with pytest.raises(ValueError, match="hides no pixel"):
    completion_scores(x, x, np.ones_like(x, bool))
