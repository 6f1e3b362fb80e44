"""The one sample-quality metric for every image model in the project.

A small CNN (``ardiff.models.classifier.Classifier``) is trained deterministically on the
train split of a ``Dataset`` (training and its on-disk cache: ``classifier_training``); its
penultimate layer is the feature space. For a set of samples (uint8 integer levels, like the
data) ``SampleQuality`` reports:

* ``frechet``: Fréchet distance between the Gaussians fitted to the features of the samples
  and of the test split ("FID" with a dataset-specific network);
* ``accuracy``: the fraction of class-conditional samples classified as their requested class;
* ``floor``: the Fréchet distance of real images outside the test split (a random subset of
  the train split) against the test split, with as many images as the samples compared. FD is biased
  upwards by finite sample size, so a score means something only beside the floor for the same
  number of samples; ``report`` computes both together;
* ``precision``/``recall``: k-nearest-neighbour precision and recall (Kynkäänniemi et al. 2019,
  ``ardiff.metrics.precision_recall``) of the sample features against the test split's: the
  fraction of samples that land on the data manifold, and the fraction of the data manifold the
  samples cover. Both are biased by sample count, so they too come with a floor
  (``floor_precision_recall``: a random train subset of the same size scored the same way).

``sharpness`` and ``pixel_entropy`` are cheap pixel statistics for the "blurry mean" experiment.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.data.base import Dataset
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.classifier_training import (DEFAULT_STEPS, ClassifierTraining, Params,
                                                check_image_dataset, load_or_train_classifier,
                                                train_classifier)
from ardiff.metrics.frechet import frechet_distance_from_stats, gaussian_stats
from ardiff.metrics.precision_recall import knn_precision_recall


class SampleQuality:
  """Classifier-feature metrics of uint8 level images against a dataset's test split."""

  def __init__(self, dataset: Dataset, params: Params, batch_size: int = 500, **settings):
    """``settings``: the ``ClassifierTraining`` fields the params were trained with (only the
    architecture ones, widths and feature_dim, matter here)."""
    check_image_dataset(dataset)
    self.dataset = dataset
    self.params = params
    self.batch_size = batch_size
    model = ClassifierTraining(**settings).model(dataset.num_classes)
    self._apply = jax.jit(
        lambda p, x: model.apply(p, levels_to_unit(x, dataset.num_levels)))
    self.test_logits, self.test_features = self._logits_and_features(dataset.x_test, "x_test")
    self._test_stats = gaussian_stats(self.test_features, "test features")
    self._train_features = None

  @classmethod
  def create(cls, dataset: Dataset, cache_dir: str | None = None, seed: int = 0,
             steps: int = DEFAULT_STEPS, **settings) -> SampleQuality:
    """Train (or, with cache_dir, load or train and cache) the classifier; wrap it."""
    if cache_dir is None:
      params = train_classifier(dataset, seed=seed, steps=steps, **settings)
    else:
      params = load_or_train_classifier(dataset, cache_dir, seed=seed, steps=steps, **settings)
    return cls(dataset, params, **settings)

  @classmethod
  def for_experiment(cls, config, workdir: str, dataset: Dataset) -> SampleQuality:
    """The experiments' metric: the classifier of `config.classifier_steps` steps, cached in
    the experiment's model cache (`config.model_cache`, relative to `workdir` unless absolute),
    so every experiment scoring the same dataset shares one trained classifier."""
    return cls.create(dataset, cache_dir=os.path.join(workdir, config.model_cache),
                      steps=config.classifier_steps)

  def _check_levels(self, levels: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(levels)
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must hold integer levels (e.g. uint8), got dtype {x.dtype}")
    if x.ndim != 4 or x.shape[1:] != self.dataset.shape:
      raise ValueError(f"{name} must have shape [N, {', '.join(map(str, self.dataset.shape))}] "
                       f"for dataset {self.dataset.name!r}, got {x.shape}")
    if x.size and (x.min() < 0 or x.max() >= self.dataset.num_levels):
      raise ValueError(f"{name} values must lie in 0..{self.dataset.num_levels - 1}, "
                       f"got range {x.min()}..{x.max()}")
    return x.astype(np.uint8)

  def _logits_and_features(self, levels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Classifier logits and features, in fixed-size (padded) chunks so jit compiles once."""
    x = self._check_levels(levels, name)
    n, bs = len(x), self.batch_size
    logits, feats = [], []
    for start in range(0, n, bs):
      chunk = x[start:start + bs]
      pad = bs - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
      lg, ft = self._apply(self.params, jnp.asarray(chunk))
      logits.append(np.asarray(lg)[:bs - pad])
      feats.append(np.asarray(ft)[:bs - pad])
    return np.concatenate(logits), np.concatenate(feats)

  def features(self, levels: np.ndarray) -> np.ndarray:
    """Penultimate-layer features [N, feature_dim] of uint8 level images [N, H, W, C]."""
    return self._logits_and_features(levels, "levels")[1]

  def predict(self, levels: np.ndarray) -> np.ndarray:
    """The classifier's class for each image."""
    return self._logits_and_features(levels, "levels")[0].argmax(-1)

  def frechet(self, samples_levels: np.ndarray) -> float:
    """Fréchet distance between the classifier features of the samples and of the test split."""
    mu, cov = gaussian_stats(self._logits_and_features(samples_levels, "samples_levels")[1],
                             "sample features")
    return frechet_distance_from_stats(mu, cov, *self._test_stats)

  def accuracy(self, samples_levels: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples the classifier assigns to their requested class."""
    labels = np.asarray(labels)
    if labels.shape != (len(samples_levels),):
      raise ValueError(f"labels must have shape ({len(samples_levels)},), got {labels.shape}")
    pred = self._logits_and_features(samples_levels, "samples_levels")[0].argmax(-1)
    return float(np.mean(pred == labels))

  def test_accuracy(self) -> float:
    """The classifier's accuracy on the test split."""
    return float(np.mean(self.test_logits.argmax(-1) == self.dataset.y_test))

  def _train_subset_features(self, num_samples: int, seed: int) -> np.ndarray:
    """Features of `num_samples` train images (capped at the split's size), drawn without
    replacement from `seed`; the train split's features are computed once and cached."""
    if self._train_features is None:
      self._train_features = self._logits_and_features(self.dataset.x_train, "x_train")[1]
    n_train = len(self._train_features)
    sel = np.random.default_rng(seed).choice(n_train, size=min(num_samples, n_train),
                                             replace=False)
    return self._train_features[sel]

  def floor(self, num_samples: int | None = None, seed: int = 0) -> float:
    """FD of `num_samples` real train images (default: as many as the test split) vs the test split.

    The train subset is drawn without replacement from `seed`; num_samples is capped at the
    train split's size. This is what a perfect sampler scores with that many samples (slightly
    pessimistic: the classifier has seen the train images).
    """
    n = len(self.dataset.x_test) if num_samples is None else int(num_samples)
    if n < 2:
      raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    mu, cov = gaussian_stats(self._train_subset_features(n, seed), "train features")
    return frechet_distance_from_stats(mu, cov, *self._test_stats)

  def precision_recall(self, samples_levels: np.ndarray, k: int = 3) -> tuple[float, float]:
    """k-NN (precision, recall) of the samples' features against the test split's features.

    precision: fraction of samples inside some test image's k-NN ball (realism);
    recall: fraction of test images inside some sample's k-NN ball (coverage).
    Biased by both counts: read beside ``floor_precision_recall(len(samples_levels), k)``.
    """
    x = self._check_levels(samples_levels, "samples_levels")
    if isinstance(k, int) and len(x) < k + 1:
      raise ValueError(f"samples_levels needs at least k + 1 = {k + 1} images, got {len(x)}")
    feats = self._logits_and_features(x, "samples_levels")[1]
    return knn_precision_recall(self.test_features, feats, k)

  def floor_precision_recall(self, num_samples: int | None = None, k: int = 3,
                             seed: int = 0) -> tuple[float, float]:
    """``precision_recall`` of `num_samples` real train images (default: as many as the test
    split) against the test split: what a perfect sampler scores with that many samples.

    Same subset rule as ``floor`` (without replacement from `seed`, capped at the train split's
    size). Neither number is 1 for a perfect sampler: k-NN balls do not cover the whole support.
    """
    n = len(self.dataset.x_test) if num_samples is None else int(num_samples)
    if n < k + 1:
      raise ValueError(f"num_samples must be >= k + 1 = {k + 1}, got {num_samples}")
    return knn_precision_recall(self.test_features, self._train_subset_features(n, seed), k)

  def report(self, samples_levels: np.ndarray, labels: np.ndarray | None = None,
             k: int = 3) -> dict:
    """Every metric for one set of samples, with the floors for the same number of samples
    (`k`: the precision/recall neighbourhood size)."""
    x = self._check_levels(samples_levels, "samples_levels")
    precision, recall = self.precision_recall(x, k)
    precision_floor, recall_floor = self.floor_precision_recall(len(x), k)
    out = {
        "num_samples": len(x),
        "frechet": self.frechet(x),
        "frechet_floor": self.floor(len(x)),
        "precision": precision,
        "recall": recall,
        "precision_floor": precision_floor,
        "recall_floor": recall_floor,
        "sharpness": sharpness(levels_to_unit(x, self.dataset.num_levels)),
        "data_sharpness": sharpness(levels_to_unit(self.dataset.x_test, self.dataset.num_levels)),
        "pixel_entropy": pixel_entropy(x, self.dataset.num_levels),
        "data_pixel_entropy": pixel_entropy(self.dataset.x_test, self.dataset.num_levels),
    }
    if labels is not None:
      out["accuracy"] = self.accuracy(x, labels)
    return out


def sharpness(images: np.ndarray) -> float:
  """Mean absolute 4-neighbour Laplacian of float images [N, H, W, C] in [-1, 1].

  Evaluated on interior pixels only (no padding); blurry images score low, a constant image 0.
  """
  x = np.asarray(images, dtype=np.float64)
  if x.ndim != 4 or x.shape[1] < 3 or x.shape[2] < 3:
    raise ValueError(f"images must be [N, H, W, C] with H, W >= 3, got shape {x.shape}")
  lap = (4.0 * x[:, 1:-1, 1:-1] - x[:, :-2, 1:-1] - x[:, 2:, 1:-1]
         - x[:, 1:-1, :-2] - x[:, 1:-1, 2:])
  return float(np.mean(np.abs(lap)))


def pixel_entropy(levels: np.ndarray, num_levels: int) -> float:
  """Entropy in bits of the histogram of grey levels over all pixels of all images.

  Crisp digits use mostly the extreme levels (low entropy); a blurry mean spreads mass over
  intermediate levels (higher entropy). At most log2(num_levels).
  """
  x = np.asarray(levels)
  if not np.issubdtype(x.dtype, np.integer) or x.size == 0:
    raise ValueError(f"levels must be a non-empty integer array, got dtype {x.dtype}")
  if x.min() < 0 or x.max() >= num_levels:
    raise ValueError(f"levels must lie in 0..{num_levels - 1}, got range {x.min()}..{x.max()}")
  p = np.bincount(x.ravel(), minlength=num_levels) / x.size
  p = p[p > 0]
  return float(-np.sum(p * np.log2(p)))
