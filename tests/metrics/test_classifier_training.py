"""Training of the sample-quality classifier: deterministic, cached on disk, reloaded exactly."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from ardiff.data.digits import load_digits_dataset
from ardiff.metrics import classifier_training as ct
from ardiff.metrics import sample_quality as sq_lib

SHORT_STEPS = 20  # for the determinism and cache tests: one compile shared by both


@pytest.fixture(scope="module")
def digits():
  return load_digits_dataset()


def test_training_is_deterministic(digits):
  a = ct.train_classifier(digits, steps=SHORT_STEPS)
  b = ct.train_classifier(digits, steps=SHORT_STEPS)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  c = ct.train_classifier(digits, seed=1, steps=SHORT_STEPS)  # reuses the compiled step
  assert any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(c)))


def test_cached_params_reload_bit_identically(digits, tmp_path, monkeypatch):
  cache = str(tmp_path / "cache")
  trained = ct.load_or_train_classifier(digits, cache, steps=SHORT_STEPS)
  path = ct.cache_path(digits, cache, steps=SHORT_STEPS)
  assert os.path.exists(path)
  assert os.listdir(cache) == [os.path.basename(path)]  # no temp file left behind

  def no_training(*args, **kwargs):
    raise AssertionError("the cached classifier should have been loaded, not retrained")

  monkeypatch.setattr(ct, "train_classifier", no_training)
  monkeypatch.setattr(sq_lib, "train_classifier", no_training)
  loaded = ct.load_or_train_classifier(digits, cache, steps=SHORT_STEPS)
  assert jax.tree.structure(loaded) == jax.tree.structure(trained)
  for x, y in zip(jax.tree.leaves(trained), jax.tree.leaves(loaded)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # SampleQuality.create with a cache_dir goes through the same cache.
  created = sq_lib.SampleQuality.create(digits, cache_dir=cache, steps=SHORT_STEPS)
  for x, y in zip(jax.tree.leaves(trained), jax.tree.leaves(created.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # So does an experiment's, from its config: the cache is model_cache under the work dir.
  config = {"model_cache": os.path.basename(cache), "classifier_steps": SHORT_STEPS}
  config = type("Config", (), config)()
  scored = sq_lib.SampleQuality.for_experiment(config, os.path.dirname(cache), digits)
  for x, y in zip(jax.tree.leaves(trained), jax.tree.leaves(scored.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # Other settings or another seed get another file.
  assert ct.cache_path(digits, cache, steps=SHORT_STEPS + 1) != path
  assert ct.cache_path(digits, cache, seed=1, steps=SHORT_STEPS) != path
