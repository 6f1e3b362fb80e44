"""digits with independent pixels: marginals kept exactly, dependence between pixels removed."""

import numpy as np
import pytest

from ardiff.data import data_spec, load_dataset
from ardiff.data.synthetic import (independent_pixels, marginal_cross_entropy_bits,
                                   marginal_entropy_bits)


@pytest.fixture(scope="module")
def digits():
  return load_dataset("digits")


@pytest.fixture(scope="module")
def shuffled():
  return load_dataset("digits_independent")


def _columns(x):
  return x.reshape(len(x), -1)


def _mean_abs_corr(x):
  """Mean |Pearson correlation| over pairs of non-constant pixel positions."""
  cols = _columns(x).astype(np.float64)
  cols = cols[:, cols.std(axis=0) > 0]
  corr = np.corrcoef(cols, rowvar=False)
  return float(np.abs(corr[np.triu_indices_from(corr, k=1)]).mean())


def test_registered_with_its_own_name_and_spec(digits, shuffled):
  assert shuffled.name == "digits_independent"
  spec = data_spec("digits_independent")
  assert (spec.shape, spec.num_classes, spec.num_levels) == (digits.shape, 10, 17)
  assert len(shuffled.x_train) == len(digits.x_train) and len(shuffled.x_test) == len(digits.x_test)


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_pixel_keeps_its_marginal_exactly(digits, shuffled, split):
  a, b = _columns(getattr(digits, f"x_{split}")), _columns(getattr(shuffled, f"x_{split}"))
  np.testing.assert_array_equal(np.sort(a, axis=0), np.sort(b, axis=0))
  assert not np.array_equal(a, b)  # and it did move something
  # Labels stay in place (their counts unchanged), as documented.
  np.testing.assert_array_equal(getattr(digits, f"y_{split}"), getattr(shuffled, f"y_{split}"))


def test_splits_are_shuffled_within_themselves(digits, shuffled):
  """Test images are permuted among the test images only (held-out stays held out): the test
  columns of the shuffled set are the real test columns rearranged, not train values."""
  sorted_test = np.sort(_columns(shuffled.x_test), axis=0)
  np.testing.assert_array_equal(sorted_test, np.sort(_columns(digits.x_test), axis=0))
  assert not np.array_equal(sorted_test, np.sort(_columns(digits.x_train[:len(digits.x_test)]),
                                                  axis=0))


def _mean_neighbour_corr(x):
  """Mean Pearson correlation of horizontally adjacent pixels (non-constant pairs)."""
  x = x[..., 0].astype(np.float64)
  a, b = x[:, :, :-1].reshape(len(x), -1), x[:, :, 1:].reshape(len(x), -1)
  ok = np.where((a.std(axis=0) > 0) & (b.std(axis=0) > 0))[0]
  return float(np.mean([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in ok]))


def test_correlation_between_pixels_is_destroyed(digits, shuffled):
  # Real digits: mean |corr| over all pairs 0.12, adjacent pixels +0.32 on average.
  real, fake = _mean_abs_corr(digits.x_train), _mean_abs_corr(shuffled.x_train)
  assert real > 0.1, real
  # Independent columns of N = 1500: |corr| ~ sqrt(2 / pi) / sqrt(N) = 0.021.
  assert fake < 0.03 and real > 4 * fake, (real, fake)
  assert _mean_neighbour_corr(digits.x_train) > 0.25
  assert abs(_mean_neighbour_corr(shuffled.x_train)) < 0.02
  # The test split (N = 297, noise level ~0.046) is shuffled as well.
  assert _mean_abs_corr(shuffled.x_test) < 0.06
  assert abs(_mean_neighbour_corr(shuffled.x_test)) < 0.03


def test_deterministic_under_the_seed(digits):
  a, b = independent_pixels(digits, seed=3), independent_pixels(digits, seed=3)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  np.testing.assert_array_equal(a.x_test, b.x_test)
  c = independent_pixels(digits, seed=4)
  assert not np.array_equal(a.x_train, c.x_train)
  # Models are cached by dataset name: another shuffle gets another name.
  assert (a.name, c.name) == ("digits_independent_seed3", "digits_independent_seed4")
  np.testing.assert_array_equal(load_dataset("digits_independent").x_train,
                                independent_pixels(digits, seed=0).x_train)


def test_rejects_points(tmp_path):
  with pytest.raises(ValueError, match="image dataset"):
    independent_pixels(load_dataset("spiral", num_train=10, num_test=4, num_classes=2,
                                     noise=0.0, seed=0))


def test_marginal_entropies_against_hand_counts():
  # Position 0: levels (0, 0, 1, 1) -> 1 bit; position 1: constant -> 0 bits.
  x = np.array([[0, 2], [0, 2], [1, 2], [1, 2]], np.uint8)
  np.testing.assert_allclose(marginal_entropy_bits(x, 3), [1.0, 0.0])
  # Fitted on itself with no smoothing the cross-entropy is the entropy.
  np.testing.assert_allclose(marginal_cross_entropy_bits(x, x, 3, alpha=0.0), [1.0, 0.0])
  # With add-1/2 smoothing position 1's q(2) = 4.5 / 5.5.
  np.testing.assert_allclose(marginal_cross_entropy_bits(x, x, 3)[1], -np.log2(4.5 / 5.5))
  # Shuffling columns leaves the per-position entropies unchanged.
  digits = load_dataset("digits")
  np.testing.assert_allclose(marginal_entropy_bits(digits.x_train, 17),
                             marginal_entropy_bits(independent_pixels(digits).x_train, 17))
