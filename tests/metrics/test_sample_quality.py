"""Sample-quality metric on digits: classifier accuracy, Fréchet and k-NN precision/recall
sanity, pixel stats.

The classifier's training determinism and cache: test_classifier_training.py."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from ardiff.data.levels import levels_to_unit
from ardiff.data.digits import load_digits_dataset
from ardiff.metrics import sample_quality as sq_lib
from ardiff.metrics.classifier_training import train_classifier
from ardiff.metrics.frechet import frechet_distance
from ardiff.metrics.precision_recall import knn_precision_recall
from ardiff.models.classifier import Classifier


@pytest.fixture(scope="module")
def digits():
  return load_digits_dataset()


@pytest.fixture(scope="module")
def quality(digits):
  """The metric's real classifier: default settings (DEFAULT_STEPS steps, seed 0)."""
  return sq_lib.SampleQuality(digits, train_classifier(digits))


def _noise_images(digits, n: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, digits.num_levels, size=(n, *digits.shape)).astype(np.uint8)


def _independent_test_accuracy(digits, params) -> float:
  logits, _ = Classifier(digits.num_classes).apply(
      params, levels_to_unit(digits.x_test, digits.num_levels))
  return float(np.mean(np.asarray(logits).argmax(-1) == digits.y_test))


def test_classifier_reaches_90_percent_on_digits(digits, quality):
  acc = _independent_test_accuracy(digits, quality.params)
  assert acc >= 0.90, acc
  assert quality.test_accuracy() == acc


def test_accuracy_of_test_split_with_true_labels_is_test_accuracy(digits, quality):
  acc = _independent_test_accuracy(digits, quality.params)
  assert quality.accuracy(digits.x_test, digits.y_test) == acc
  wrong = (digits.y_test + 1) % digits.num_classes
  assert quality.accuracy(digits.x_test, wrong) <= 1.0 - acc + 1e-12


def test_frechet_of_test_split_against_itself_is_zero(digits, quality):
  scale = np.trace(np.cov(quality.test_features.astype(np.float64), rowvar=False))
  assert abs(quality.frechet(digits.x_test)) < 1e-6 * scale


def test_train_split_is_closer_than_noise(digits, quality):
  n = len(digits.x_test)
  noise = quality.frechet(_noise_images(digits, n))
  floor = quality.floor(n)
  train = quality.frechet(digits.x_train[:n])
  assert 0.0 < floor < noise / 10, (floor, noise)
  assert train < noise / 10, (train, noise)


def test_frechet_and_floor_match_direct_feature_computation(digits, quality):
  feats = Classifier(digits.num_classes).apply(
      quality.params, levels_to_unit(digits.x_train, digits.num_levels))[1]
  direct = frechet_distance(np.asarray(feats), quality.test_features)
  np.testing.assert_allclose(quality.frechet(digits.x_train), direct, rtol=1e-4)
  # With every train image the floor's subset is the whole train split (permuted).
  np.testing.assert_allclose(quality.floor(len(digits.x_train)), direct, rtol=1e-4)


def test_precision_recall_and_floor_match_direct_feature_computation(digits, quality):
  """Against the test split's features as the real set (not the samples', not the train's)."""
  feats = np.asarray(Classifier(digits.num_classes).apply(
      quality.params, levels_to_unit(digits.x_train, digits.num_levels))[1])
  test = np.asarray(Classifier(digits.num_classes).apply(
      quality.params, levels_to_unit(digits.x_test, digits.num_levels))[1])
  direct = knn_precision_recall(test, feats[:100], 2)
  assert quality.precision_recall(digits.x_train[:100], k=2) == direct
  # With every train image the floor's subset is the whole train split (permuted); the metric
  # does not depend on the order of the points.
  assert quality.floor_precision_recall(len(digits.x_train), k=2) == knn_precision_recall(
      test, feats, 2)


def test_real_images_score_near_the_floor_and_noise_scores_zero(digits, quality):
  """Train images not drawn by the floor's seed are as good as the floor's: both are real.

  Tolerance 0.08: each number is a fraction of 297 points (binomial standard error about 0.016
  at 0.9), so two independent draws differ by 0.022 in standard deviation; 0.08 is 3.5 of them.
  """
  n = len(digits.x_test)
  floor = quality.floor_precision_recall(n)
  real = quality.precision_recall(digits.x_train[-n:])
  assert min(floor) > 0.8, floor
  np.testing.assert_allclose(real, floor, atol=0.08)
  assert quality.precision_recall(_noise_images(digits, n)) == (0.0, 0.0)


def test_one_repeated_image_is_precise_but_has_no_recall(digits, quality):
  """Mode collapse: n copies of one test image. Every sample is a real point (precision 1); the
  copies' k-NN balls have radius 0, so they cover at most that image (recall <= 1/n, allowing one
  more for a rounding tie)."""
  n = len(digits.x_test)
  precision, recall = quality.precision_recall(np.repeat(digits.x_test[:1], n, axis=0))
  assert precision == 1.0
  assert recall <= 2 / n, recall


def test_report_pairs_score_with_floor_for_same_size(digits, quality):
  samples = digits.x_train[:200]
  out = quality.report(samples, digits.y_train[:200])
  assert out["num_samples"] == 200
  assert out["frechet"] == quality.frechet(samples)
  assert out["frechet_floor"] == quality.floor(200)
  assert (out["precision"], out["recall"]) == quality.precision_recall(samples)
  assert (out["precision_floor"], out["recall_floor"]) == quality.floor_precision_recall(200)
  assert (out["precision"], out["recall"]) != quality.precision_recall(samples, k=1)
  assert out["accuracy"] == quality.accuracy(samples, digits.y_train[:200])
  assert "accuracy" not in quality.report(samples)


def test_eval_image_rows_are_the_comparisons_scores_with_floors_for_as_many(digits, quality):
  """`ardiff eval` on images: FD, precision, recall of the samples, each beside the same metric
  of as many train images; no bits row where the data are points or there is no nll_bound."""
  from ardiff.evaluation import bits_row, image_rows

  samples = digits.x_train[-150:]
  (fd, precision, recall) = image_rows(samples, quality)
  assert fd == ("fd", quality.frechet(samples), quality.floor(150))
  floor = quality.floor_precision_recall(150)
  got = quality.precision_recall(samples)
  assert precision == ("precision", got[0], floor[0]) and recall == ("recall", got[1], floor[1])
  assert bits_row("raster", object(), None, digits, None) is None  # no nll_bound
  points = type("Points", (), {"kind": "points"})()
  assert bits_row("gaussian", type("P", (), {"nll_bound": 1})(), None, points, None) is None


def test_bad_samples_raise(digits, quality):
  with pytest.raises(ValueError, match="samples_levels must hold integer levels"):
    quality.frechet(digits.x_test.astype(np.float32))
  with pytest.raises(ValueError, match=r"samples_levels must have shape \[N, 8, 8, 1\]"):
    quality.frechet(digits.x_test[..., 0])
  with pytest.raises(ValueError, match="must lie in 0..16"):
    quality.frechet(np.full((4, 8, 8, 1), 17, np.uint8))
  with pytest.raises(ValueError, match="labels must have shape"):
    quality.accuracy(digits.x_test, digits.y_test[:-1])
  with pytest.raises(ValueError, match="samples_levels must hold integer levels"):
    quality.precision_recall(digits.x_test.astype(np.float32))
  with pytest.raises(ValueError, match=r"samples_levels needs at least k \+ 1 = 4 images, got 3"):
    quality.precision_recall(digits.x_test[:3])
  with pytest.raises(ValueError, match=r"num_samples must be >= k \+ 1 = 4, got 3"):
    quality.floor_precision_recall(3)


def test_sharpness_matches_scipy_laplacian():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, size=(3, 9, 7, 2))
  lap = np.stack([scipy.ndimage.laplace(images[i, ..., c]) for i in range(3) for c in range(2)])
  expected = np.mean(np.abs(lap[:, 1:-1, 1:-1]))
  np.testing.assert_allclose(sq_lib.sharpness(images), expected, rtol=1e-12)
  assert sq_lib.sharpness(np.full((2, 5, 5, 1), 0.3)) < 1e-15
  checker = np.where(np.indices((6, 6)).sum(0) % 2 == 0, 1.0, -1.0)[None, ..., None]
  assert sq_lib.sharpness(checker) == 8.0


def test_pixel_entropy_matches_scipy():
  rng = np.random.default_rng(1)
  levels = rng.integers(0, 5, size=(10, 4, 4, 1))
  expected = scipy.stats.entropy(np.bincount(levels.ravel(), minlength=5), base=2)
  np.testing.assert_allclose(sq_lib.pixel_entropy(levels, 5), expected, rtol=1e-12)
  assert sq_lib.pixel_entropy(np.zeros((2, 3, 3, 1), np.uint8), 17) == 0.0
  uniform = np.arange(16).reshape(1, 4, 4, 1)
  np.testing.assert_allclose(sq_lib.pixel_entropy(uniform, 16), 4.0)
  with pytest.raises(ValueError, match="levels must lie in 0..15"):
    sq_lib.pixel_entropy(uniform + 1, 16)


def test_blurry_mean_is_less_sharp_and_higher_entropy(digits):
  """The class-mean images (what an over-smoothed model produces) vs the real test digits."""
  means = np.stack([digits.x_train[digits.y_train == k].mean(0) for k in range(10)])
  mean_levels = np.round(means).astype(np.uint8)
  real = digits.x_test[:200]
  unit = lambda x: levels_to_unit(x, digits.num_levels)  # noqa: E731
  assert sq_lib.sharpness(unit(mean_levels)) < 0.7 * sq_lib.sharpness(unit(real))
  assert (sq_lib.pixel_entropy(mean_levels, digits.num_levels)
          > sq_lib.pixel_entropy(real, digits.num_levels))
