"""Fréchet distance against closed forms and an independent float64 reference (scipy sqrtm)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ardiff.metrics.frechet import (
    frechet_distance, frechet_distance_from_stats, gaussian_stats, psd_sqrt)


def _random_features(seed: int, n: int = 500, d: int = 16) -> np.ndarray:
  rng = np.random.default_rng(seed)
  mixing = rng.normal(size=(d, d))
  return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d)


def _reference_fd(f1: np.ndarray, f2: np.ndarray) -> float:
  """The textbook formula with a general matrix square root of S1 @ S2 (scipy)."""
  m1, m2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2.0 * covmean))


def test_self_distance_is_zero():
  f = _random_features(0)
  scale = np.trace(np.cov(f, rowvar=False))
  assert abs(frechet_distance(f, f)) < 1e-9 * scale


def test_matches_scipy_reference():
  for seed in range(3):
    f1, f2 = _random_features(seed), _random_features(seed + 10, n=300)
    ref = _reference_fd(f1, f2)
    np.testing.assert_allclose(frechet_distance(f1, f2), ref, rtol=1e-8)


def test_matches_reference_with_rank_deficient_covariance():
  rng = np.random.default_rng(3)
  f1 = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 8))  # covariance of rank 3 in 8 dims
  f2 = _random_features(4, n=400, d=8)
  np.testing.assert_allclose(frechet_distance(f1, f2), _reference_fd(f1, f2), rtol=1e-6)


def test_grows_monotonically_with_noise():
  rng = np.random.default_rng(1)
  f = _random_features(1, n=2000, d=8)
  noise = rng.normal(size=f.shape)
  distances = [frechet_distance(f, f + s * noise) for s in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)]
  assert distances[0] < 1e-9
  assert all(b > a for a, b in zip(distances, distances[1:])), distances


def test_diagonal_gaussians_closed_form():
  rng = np.random.default_rng(2)
  d = 6
  m1, m2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
  expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
  got = frechet_distance_from_stats(m1, np.diag(s1), m2, np.diag(s2))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_commuting_full_covariances_closed_form():
  # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T share eigenvectors: tr sqrt(S1 S2) = sum sqrt(a b).
  rng = np.random.default_rng(5)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  a, b = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
  m1, m2 = rng.normal(size=5), rng.normal(size=5)
  expected = np.sum((m1 - m2) ** 2) + np.sum(a + b - 2.0 * np.sqrt(a * b))
  got = frechet_distance_from_stats(m1, (q * a) @ q.T, m2, (q * b) @ q.T)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_samples_from_known_gaussians_approach_closed_form():
  rng = np.random.default_rng(6)
  m1, m2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, -1.0])
  s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 2.0, 1.5])
  f1 = m1 + np.sqrt(s1) * rng.normal(size=(200_000, 3))
  f2 = m2 + np.sqrt(s2) * rng.normal(size=(200_000, 3))
  expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
  np.testing.assert_allclose(frechet_distance(f1, f2), expected, atol=0.02)


def test_psd_sqrt_squares_back():
  rng = np.random.default_rng(7)
  a = rng.normal(size=(6, 6))
  s = a @ a.T
  r = psd_sqrt(s)
  np.testing.assert_allclose(r @ r, s, atol=1e-10)
  np.testing.assert_allclose(r, scipy.linalg.sqrtm(s).real, atol=1e-8)


def test_gaussian_stats_is_unbiased_covariance():
  f = _random_features(8, n=50, d=4)
  mu, cov = gaussian_stats(f)
  centred = f - f.mean(0)
  np.testing.assert_allclose(mu, f.mean(0))
  np.testing.assert_allclose(cov, centred.T @ centred / (len(f) - 1))


def test_bad_inputs_raise():
  f = _random_features(9, n=20, d=4)
  with pytest.raises(ValueError, match="feature dimension"):
    frechet_distance(f, f[:, :3])
  with pytest.raises(ValueError, match="features1 must be a 2-D"):
    frechet_distance(f[0], f)
  with pytest.raises(ValueError, match="at least 2 rows"):
    frechet_distance(f, f[:1])
  bad = f.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match="features2 contains non-finite"):
    frechet_distance(f, bad)
  with pytest.raises(ValueError, match="cov2"):
    frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))


def test_non_commuting_2x2_covariances_closed_form():
  """For 2x2 matrices, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)) (the two eigenvalues of M = S1 S2
  are real and non-negative), an independent closed form for covariances that do not commute,
  where formulas that are right only for commuting (e.g. diagonal) covariances go wrong."""
  s1 = np.array([[2.0, 0.9], [0.9, 0.7]])
  s2 = np.array([[0.4, -0.3], [-0.3, 1.5]])
  assert not np.allclose(s1 @ s2, s2 @ s1)
  m1, m2 = np.array([0.3, -1.0]), np.array([1.0, 0.5])
  product = s1 @ s2
  cross = np.sqrt(np.trace(product) + 2.0 * np.sqrt(np.linalg.det(product)))
  expected = np.sum((m1 - m2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross
  np.testing.assert_allclose(frechet_distance_from_stats(m1, s1, m2, s2), expected, rtol=1e-12)
