"""Datasets derived from real ones with a known structure, for checking claims against closed forms.

`independent_pixels(dataset, seed)` keeps every pixel position's marginal distribution and
removes every dependence between positions: for each position (h, w, c) separately, the values
that position takes across the images of a split are permuted by an independent random
permutation. Writing x[n, i] for image n at position i and pi_i for position i's permutation,
the new images are x'[n, i] = x[pi_i(n), i]. Then

  * each column x'[:, i] is a rearrangement of x[:, i]: the empirical marginal p_i of every
    position is kept exactly (same sorted column);
  * the positions of one new image come from (almost always) different source images, chosen
    by independent permutations, so the empirical joint law is close to the product of the
    marginals prod_i p_i (exactly so as the split grows), and pixel-pixel correlations are at
    the level of sampling noise (about 1/sqrt(N));
  * the entropy of that product law is sum_i H(p_i), so a model of the data can do no better,
    per pixel, than (1/L) sum_i H(p_i) bits on average, and predicting all pixels at once
    from nothing loses nothing against one at a time.

Caveats. The split is kept as it is: train images are shuffled among the train images and test
images among the test images, never across, so held-out images stay held out and each split
keeps its own marginals (the test marginals differ from the train ones by sampling noise, 297
images for digits). Labels stay where they were (class balance unchanged), but after the
shuffle they say nothing about the pixels. Finite N leaves weak residual dependence: two
positions of one new image can come from the same source image (probability 1/N per pair).
"""

from __future__ import annotations

import numpy as np

from ardiff.data.base import Dataset


def shuffle_positions(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """x [N, ...] with each position's column x[:, i] permuted independently of every other."""
  x = np.asarray(x)
  flat = x.reshape(len(x), -1)
  return rng.permuted(flat, axis=0).reshape(x.shape)


def independent_pixels(dataset: Dataset, seed: int = 0) -> Dataset:
  """The dataset with every position's values shuffled across the images of its own split.

  Named `<name>_independent` for seed 0 and `<name>_independent_seed<seed>` otherwise (models
  are cached by dataset name, so two shuffles must not share one). Deterministic in (dataset,
  seed); the train and test splits use independent random streams derived from `seed`.
  """
  if dataset.kind != "image":
    raise ValueError(f"independent_pixels needs an image dataset, got {dataset.name!r} of kind "
                     f"{dataset.kind!r}")
  train_rng, test_rng = (np.random.default_rng([seed, split]) for split in (0, 1))
  return Dataset(
      name=f"{dataset.name}_independent" + (f"_seed{seed}" if seed else ""), kind="image",
      x_train=shuffle_positions(dataset.x_train, train_rng), y_train=dataset.y_train.copy(),
      x_test=shuffle_positions(dataset.x_test, test_rng), y_test=dataset.y_test.copy(),
      num_classes=dataset.num_classes, num_levels=dataset.num_levels)


def marginal_entropy_bits(x: np.ndarray, num_levels: int) -> np.ndarray:
  """Entropy in bits of each position's empirical marginal: H(p_i) = -sum_v p_i(v) log2 p_i(v),
  one value per position of x [N, ...] (integer levels in 0..num_levels-1), shape [L]."""
  flat = np.asarray(x).reshape(len(x), -1).astype(np.int64)
  counts = np.stack([np.bincount(col, minlength=num_levels) for col in flat.T])  # [L, V]
  p = counts / len(flat)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, -p * np.log2(p), 0.0)
  return terms.sum(axis=1)


def marginal_cross_entropy_bits(x_fit: np.ndarray, x_eval: np.ndarray, num_levels: int,
                                alpha: float = 0.5) -> np.ndarray:
  """Bits per position of x_eval under the product of x_fit's per-position marginals, each
  smoothed by adding `alpha` to every level's count (a level a position never took in x_fit
  would otherwise cost infinitely many bits): -mean_n log2 q_i(x_eval[n, i]), shape [L].

  This is the test NLL of the best model that treats positions as independent and is fitted
  on x_fit: the closed-form reference for a model trained on x_fit and scored on x_eval."""
  fit = np.asarray(x_fit).reshape(len(x_fit), -1).astype(np.int64)
  ev = np.asarray(x_eval).reshape(len(x_eval), -1).astype(np.int64)
  counts = np.stack([np.bincount(col, minlength=num_levels) for col in fit.T]) + alpha
  q = counts / counts.sum(axis=1, keepdims=True)  # [L, V]
  return -np.log2(q[np.arange(fit.shape[1])[None, :], ev]).mean(axis=0)
