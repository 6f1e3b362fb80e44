"""k-NN precision and recall against a brute-force double loop, closed-form configurations
and scipy's nearest-neighbour distances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.spatial

from ardiff.metrics import precision_recall as pr


def _brute_radii(x: np.ndarray, k: int) -> list[float]:
  """k-th smallest distance to the other points, by a Python double loop."""
  out = []
  for i in range(len(x)):
    dists = sorted(math.dist(x[i], x[j]) for j in range(len(x)) if j != i)
    out.append(dists[k - 1])
  return out


def _brute_fraction_inside(points: np.ndarray, centres: np.ndarray, k: int) -> float:
  radii = _brute_radii(centres, k)
  hits = 0
  for p in points:
    hits += any(math.dist(p, c) <= radii[j] for j, c in enumerate(centres))
  return hits / len(points)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_matches_brute_force_double_loop(k):
  rng = np.random.default_rng(k)
  # A narrower, shifted fake cloud: neither number is 0 or 1, and they differ.
  real = rng.normal(size=(40, 3))
  fake = 0.6 * rng.normal(size=(33, 3)) + 1.0
  precision, recall = pr.knn_precision_recall(real, fake, k)
  assert precision == _brute_fraction_inside(fake, real, k)
  assert recall == _brute_fraction_inside(real, fake, k)
  assert 0.0 < recall < 0.5 < precision < 1.0  # the case tells swapped roles apart
  np.testing.assert_allclose(pr.knn_radii(real, k), _brute_radii(real, k), rtol=1e-12)


def test_chunked_matches_brute_force(monkeypatch):
  """Tiny chunks (3 rows of 31 distances per chunk, a ragged last chunk) change nothing."""
  rng = np.random.default_rng(7)
  real, fake = rng.normal(size=(29, 4)), rng.normal(size=(31, 4)) + 0.5
  whole = pr.knn_precision_recall(real, fake, 3)
  monkeypatch.setattr(pr, "_PAIRS", 3 * 31)
  assert pr.knn_precision_recall(real, fake, 3) == whole
  assert whole == (_brute_fraction_inside(fake, real, 3), _brute_fraction_inside(real, fake, 3))
  np.testing.assert_allclose(pr.knn_radii(fake, 2), _brute_radii(fake, 2), rtol=1e-12)


def test_identical_sets_score_one():
  x = np.random.default_rng(0).normal(size=(60, 8)) * 100.0 + 1e3  # large norms: cancellation
  assert pr.knn_precision_recall(x, x.copy(), 3) == (1.0, 1.0)


@pytest.mark.parametrize("tiny_chunks", [False, True])
def test_duplicates_give_zero_radius_and_copies_stay_inside(tiny_chunks, monkeypatch):
  """Fakes: 4 copies each of 5 points (a collapsed sampler), so every k = 3 radius is exactly 0.

  Large norms in 64-d make the expansion ||a||^2 + ||b||^2 - 2 a.b of a copy's distance round
  to +-3e-8 rather than 0; only the exact recomputation keeps the radii 0 and the real copies
  inside their zero-radius balls. Recall: the 5 real copies of the fakes out of 10 real points.
  With tiny chunks the recomputation runs in batches of 3 pairs (and row chunks of 2 rows).
  """
  if tiny_chunks:
    monkeypatch.setattr(pr, "_BUDGET", 3 * 64)
    monkeypatch.setattr(pr, "_PAIRS", 2 * 20)
  rng = np.random.default_rng(1)
  points = rng.normal(size=(5, 64)) * 100.0 + 1e3
  fake = np.repeat(points, 4, axis=0)
  np.testing.assert_array_equal(pr.knn_radii(fake, 3), 0.0)
  real = np.concatenate([points, rng.normal(size=(5, 64)) * 100.0 + 1e3])
  precision, recall = pr.knn_precision_recall(real, fake, 3)
  assert recall == 0.5
  assert precision == 1.0  # each fake equals a real point: distance 0 <= its radius


def test_far_apart_clusters_score_zero():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(50, 4))
  fake = rng.normal(size=(50, 4)) + 100.0
  assert pr.knn_precision_recall(real, fake, 3) == (0.0, 0.0)


def test_fake_covering_one_of_two_clusters():
  """Real: two unit clusters 50 apart. Fake: points from the first cluster's distribution.

  Precision: every fake point lies inside the first cluster; with 200 real points there the
  k-NN balls cover all but the fringe, so precision is close to 1 (>= 0.9, the fringe of a 3-d
  Gaussian beyond the balls of 200 points is a few percent). Recall: no real point of the second
  cluster is within reach of a fake ball (radii ~1, distance ~50), so recall is at most 0.5, and
  the fake balls cover most of the first cluster, so at least 0.45.
  """
  rng = np.random.default_rng(3)
  real = np.concatenate([rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) + 50.0])
  fake = rng.normal(size=(200, 3))
  precision, recall = pr.knn_precision_recall(real, fake, 3)
  assert precision >= 0.9, precision
  assert 0.45 <= recall <= 0.5, recall


def test_radii_k1_is_nearest_neighbour_distance_and_grow_with_k():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(30, 6))
  d = scipy.spatial.distance.cdist(x, x)
  np.fill_diagonal(d, np.inf)
  np.testing.assert_allclose(pr.knn_radii(x, 1), d.min(axis=1), rtol=1e-12)
  np.testing.assert_allclose(pr.knn_radii(x, 4), np.sort(d, axis=1)[:, 3], rtol=1e-12)
  r1, r2, r3 = (pr.knn_radii(x, k) for k in (1, 2, 3))
  assert np.all(r1 < r2) and np.all(r2 < r3)  # continuous data: no ties


def test_radii_on_a_line_closed_form():
  """Points 0, 1, 3, 7 on a line: k-th neighbour distances read off by hand."""
  x = np.array([[0.0], [1.0], [3.0], [7.0]])
  np.testing.assert_array_equal(pr.knn_radii(x, 1), [1.0, 1.0, 2.0, 4.0])
  np.testing.assert_array_equal(pr.knn_radii(x, 2), [3.0, 2.0, 3.0, 6.0])
  np.testing.assert_array_equal(pr.knn_radii(x, 3), [7.0, 6.0, 4.0, 7.0])


def test_bad_arguments_raise_naming_the_argument():
  x = np.zeros((5, 3))
  with pytest.raises(ValueError, match=r"real must be a 2-D array"):
    pr.knn_precision_recall(np.zeros(5), x)
  with pytest.raises(ValueError, match=r"fake must be a 2-D array"):
    pr.knn_precision_recall(x, np.zeros((5, 3, 1)))
  with pytest.raises(ValueError, match="same feature dimension, got 3 and 4"):
    pr.knn_precision_recall(x, np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"fake needs at least k \+ 1 = 4 points, got 3"):
    pr.knn_precision_recall(x, np.zeros((3, 3)), k=3)
  with pytest.raises(ValueError, match=r"real needs at least k \+ 1 = 6 points, got 5"):
    pr.knn_precision_recall(x, np.zeros((9, 3)), k=5)
  with pytest.raises(ValueError, match="real contains non-finite"):
    pr.knn_precision_recall(np.full((5, 3), np.nan), x)
  for k in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="k must be a positive integer"):
      pr.knn_precision_recall(x, x, k=k)
  with pytest.raises(ValueError, match="features must be a 2-D array"):
    pr.knn_radii(np.zeros(4), 1)
  with pytest.raises(ValueError, match=r"features needs at least k \+ 1 = 3 points, got 2"):
    pr.knn_radii(np.zeros((2, 3)), 2)
