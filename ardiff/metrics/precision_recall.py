"""k-nearest-neighbour precision and recall (Kynkäänniemi et al. 2019, "Improved precision
and recall metric for assessing generative models").

Each point x of a set S gets a ball whose radius is the distance to its k-th nearest
neighbour in S (x itself excluded): r_k(x). A set's manifold estimate is the union of its
balls. For real features R and generated features F:

  precision = (1/|F|) sum_{f in F} 1[ exists r in R: ||f - r|| <= r_k(r) ]  (realism)
  recall    = (1/|R|) sum_{r in R} 1[ exists f in F: ||r - f|| <= r_k(f) ]  (coverage)

k = 3 is the paper's default. Both numbers depend on the sample counts (the balls shrink as a
set grows, and more points make "at least one ball" likelier), so they are biased and mean
something only beside a floor computed with the same counts (real held-out points scored
against the same real set, as ``SampleQuality.floor_precision_recall`` does).

Distances are Euclidean in float64, computed in row chunks of about ``_PAIRS`` distances
(temporaries of a few times 4 MB, whatever the set sizes) through
||a - b||^2 = ||a||^2 + ||b||^2 - 2 a.b, one matrix product per chunk. That expansion loses
relative accuracy when a and b nearly coincide, so pairs closer than 1% of their norms are
recomputed from the differences: a copy of a point is at distance exactly 0 and so always inside
that point's ball, even a ball of radius 0 (k + 1 duplicates). Other ties on a ball's boundary
are decided up to rounding (relative error ~1e-10). Cost: O((N + M)^2 D) time, the all-pairs
recomputation making a fully collapsed set (every point equal) several times slower.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

_PAIRS = 1 << 19  # distances per row chunk (rows * len(b))
_BUDGET = 1 << 22  # float64 numbers in one batch of exact recomputation (pairs * D)
_NEAR = 1e-4  # squared distance / (||a||^2 + ||b||^2) below which a pair is recomputed exactly


def _check_k(k: int) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive integer, got {k!r}")
  return int(k)


def _check_points(points: np.ndarray, name: str, k: int) -> np.ndarray:
  """float64 [N, D] with N >= k + 1 (each point needs k neighbours besides itself)."""
  x = np.asarray(points, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array [N, D], got shape {x.shape}")
  if x.shape[0] < k + 1:
    raise ValueError(f"{name} needs at least k + 1 = {k + 1} points, got {x.shape[0]}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains non-finite values")
  return x


def _exact_squared(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
  """||a[i] - b[j]||^2 for index pairs, from the differences, in batches of bounded size."""
  out = np.empty(len(i))
  step = max(1, _BUDGET // max(a.shape[1], 1))
  for s in range(0, len(i), step):
    diff = a[i[s:s + step]] - b[j[s:s + step]]
    out[s:s + step] = np.einsum("ij,ij->i", diff, diff)
  return out


def _distance_chunks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
  """Yield (start, D) with D[i, j] = ||a[start + i] - b[j]|| over row chunks of a."""
  nb = np.einsum("ij,ij->i", b, b)
  rows = max(1, _PAIRS // len(b))
  for start in range(0, len(a), rows):
    c = a[start:start + rows]
    norms = np.einsum("ij,ij->i", c, c)[:, None] + nb[None, :]
    d2 = norms - 2.0 * (c @ b.T)
    i, j = np.nonzero(d2 <= _NEAR * norms)  # cancellation-prone: recompute exactly
    if len(i):
      d2[i, j] = _exact_squared(c, b, i, j)
    yield start, np.sqrt(np.maximum(d2, 0.0))


def _radii(x: np.ndarray, k: int) -> np.ndarray:
  out = np.empty(len(x))
  for start, d in _distance_chunks(x, x):
    rows = np.arange(len(d))
    d[rows, start + rows] = np.inf  # exclude the point itself (by index, not by value)
    out[start:start + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
  return out


def _fraction_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
  """Fraction of `points` within distance radii[j] of at least one centres[j]."""
  inside = 0
  for _, d in _distance_chunks(points, centres):
    inside += int(np.count_nonzero(np.any(d <= radii[None, :], axis=1)))
  return inside / len(points)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
  """Distance [N] from each row of features [N, D] to its k-th nearest other row.

  The point itself is excluded by index, so a duplicate of it counts as a neighbour at
  distance 0. With k = 1 this is the nearest-neighbour distance. Needs N >= k + 1.
  """
  k = _check_k(k)
  return _radii(_check_points(features, "features", k), k)


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
  """(precision, recall) of fake features [M, D] against real features [N, D] (see module doc).

  precision: fraction of fake points inside at least one real point's k-NN ball;
  recall: fraction of real points inside at least one fake point's k-NN ball.
  Both sets need at least k + 1 points; compare only against a floor with the same counts.
  """
  k = _check_k(k)
  r = _check_points(real, "real", k)
  f = _check_points(fake, "fake", k)
  if r.shape[1] != f.shape[1]:
    raise ValueError(f"real and fake must have the same feature dimension, "
                     f"got {r.shape[1]} and {f.shape[1]}")
  precision = _fraction_inside(f, r, _radii(r, k))
  recall = _fraction_inside(r, f, _radii(f, k))
  return precision, recall
