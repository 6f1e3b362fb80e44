"""Fréchet distance between two sets of features, each summarised by a Gaussian.

  FD = |m1 - m2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The cross term is computed in float64 through symmetric eigendecompositions only:
S1 S2 is similar to the symmetric PSD matrix A = S1^(1/2) S2 S1^(1/2)
(S1 S2 = S1^(1/2) A S1^(-1/2)), so tr((S1 S2)^(1/2)) = tr(A^(1/2)) = sum sqrt(eig(A)).
Unlike a general (non-symmetric) matrix square root this never produces complex parts, and
tiny negative eigenvalues from rounding are clipped to zero.
"""

from __future__ import annotations

import numpy as np


def _check_features(features: np.ndarray, name: str) -> np.ndarray:
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array [N, D], got shape {f.shape}")
  if f.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 rows to estimate a covariance, got {f.shape[0]}")
  if not np.all(np.isfinite(f)):
    raise ValueError(f"{name} contains non-finite values")
  return f


def gaussian_stats(features: np.ndarray, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
  """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D]."""
  f = _check_features(features, name)
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric positive semi-definite matrix (negative eigenvalues -> 0)."""
  m = np.asarray(matrix, dtype=np.float64)
  w, v = np.linalg.eigh((m + m.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
  """Fréchet distance between N(mu1, cov1) and N(mu2, cov2); float64 throughout."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  d = mu1.shape[0]
  for name, value, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)),
                             ("cov1", cov1, (d, d)), ("cov2", cov2, (d, d))):
    if value.shape != shape:
      raise ValueError(f"{name} must have shape {shape} to match mu1, got {value.shape}")
  root1 = psd_sqrt(cov1)
  a = root1 @ cov2 @ root1
  eig = np.linalg.eigvalsh((a + a.T) / 2.0)
  cross = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)


def frechet_distance(features1: np.ndarray, features2: np.ndarray) -> float:
  """Fréchet distance between the Gaussians fitted to features1 [N1, D] and features2 [N2, D]."""
  mu1, cov1 = gaussian_stats(features1, "features1")
  mu2, cov2 = gaussian_stats(features2, "features2")
  if mu1.shape != mu2.shape:
    raise ValueError(
        f"features1 and features2 must have the same feature dimension, "
        f"got {mu1.shape[0]} and {mu2.shape[0]}")
  return frechet_distance_from_stats(mu1, cov1, mu2, cov2)
