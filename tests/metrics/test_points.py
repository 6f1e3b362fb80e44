"""2-D sample metrics against known answers."""

import numpy as np

from ardiff.metrics.points import (mmd_rbf, nearest_distance, nearest_label, sliced_wasserstein,
                                   spread)


def test_sliced_wasserstein_of_a_shift_equals_projected_shift():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((4000, 2))
  assert sliced_wasserstein(a, a) == 0.0
  # Shifting by d moves every 1-D projection by <u, d>: SW1 = E_u |<u, d>| = 2|d|/pi in 2-D.
  d = np.array([0.3, 0.4])
  np.testing.assert_allclose(sliced_wasserstein(a, a + d, num_projections=4000), 2 * 0.5 / np.pi,
                             rtol=0.03)


def test_column_quantiles_match_numpy():
  from ardiff.metrics.points import _column_quantiles

  rng = np.random.default_rng(3)
  for n, m in ((7, 7), (5, 9), (300, 1000)):
    x, q = rng.standard_normal((n, 4)), (np.arange(m) + 0.5) / m
    np.testing.assert_allclose(_column_quantiles(x, q), np.quantile(x, q, axis=0), rtol=1e-12,
                               atol=1e-12)


def test_mmd_matches_gaussian_closed_form():
  """For N(0, I) vs N(m, I) in d dims and kernel bandwidth s:
  MMD^2 = 2 c (1 - exp(-|m|^2 / (2 (s^2 + 2)))), c = (s^2 / (s^2 + 2))^(d/2)."""
  rng = np.random.default_rng(1)
  a, b = rng.standard_normal((2000, 2)), rng.standard_normal((2000, 2))
  s, m = 0.5, np.array([1.0, 1.0])
  c = (s**2 / (s**2 + 2)) ** 1.0
  expected = 2 * c * (1 - np.exp(-m @ m / (2 * (s**2 + 2))))
  np.testing.assert_allclose(mmd_rbf(a, b + m, bandwidth=s), expected, atol=0.006)
  assert abs(mmd_rbf(a, b, bandwidth=s)) < 0.003


def test_nearest_distance_and_label_brute_force():
  rng = np.random.default_rng(2)
  data, labels = rng.standard_normal((300, 2)), rng.integers(0, 3, 300)
  s = rng.standard_normal((50, 2))
  d = np.linalg.norm(s[:, None] - data[None], axis=-1)
  np.testing.assert_allclose(nearest_distance(s, data), d.min(1))
  np.testing.assert_array_equal(nearest_label(s, data, labels), labels[d.argmin(1)])


def test_spread_is_rms_radius():
  pts = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
  np.testing.assert_allclose(spread(pts + 5.0), 1.0)
  assert spread(np.ones((10, 2))) == 0.0
