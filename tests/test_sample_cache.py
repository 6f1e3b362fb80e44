"""Samples cached beside a model (`ardiff.sample_cache`): reused only for the same parameters,
spec, key and labels; a damaged file is redrawn."""

import jax
import numpy as np

from ardiff import sample_cache


def _draw_counter(value):
  calls = []

  def draw():
    calls.append(1)
    return np.full((3, 2), value, np.uint8)

  return draw, calls


def test_a_hit_returns_the_saved_samples_without_drawing(tmp_path):
  params = {"w": np.arange(4.0)}
  labels = np.array([0, 1, 2])
  draw, calls = _draw_counter(7)
  first = sample_cache.cached_samples(str(tmp_path), params, "ddim:8", jax.random.key(1),
                                      labels, draw)
  again = sample_cache.cached_samples(str(tmp_path), params, "ddim:8", jax.random.key(1),
                                      labels, draw)
  assert len(calls) == 1
  np.testing.assert_array_equal(first, again)
  assert again.dtype == np.uint8


def test_anything_the_samples_depend_on_is_a_miss(tmp_path):
  params, labels, key = {"w": np.arange(4.0)}, np.array([0, 1, 2]), jax.random.key(1)
  draw, calls = _draw_counter(1)
  sample_cache.cached_samples(str(tmp_path), params, "ddim:8", key, labels, draw)
  for args in [({"w": np.arange(4.0) + 1e-7}, "ddim:8", key, labels),  # params moved
               ({"w": np.arange(4.0)}, "ddim:16", key, labels),  # spec
               ({"w": np.arange(4.0)}, "ddim:8", jax.random.key(2), labels),  # key
               ({"w": np.arange(4.0)}, "ddim:8", key, np.array([0, 1, 1]))]:  # labels
    sample_cache.cached_samples(str(tmp_path), *args, draw)
  assert len(calls) == 5
  sample_cache.cached_samples(str(tmp_path), params, "ddim:8", key, labels, draw, enabled=False)
  assert len(calls) == 6


def test_a_damaged_file_is_redrawn_and_replaced(tmp_path):
  params, labels, key = {"w": np.arange(4.0)}, np.array([0, 1, 2]), jax.random.key(1)
  draw, calls = _draw_counter(5)
  sample_cache.cached_samples(str(tmp_path), params, "s", key, labels, draw)
  (path,) = (tmp_path / "samples").iterdir()
  path.write_bytes(path.read_bytes()[:20])  # torn
  out = sample_cache.cached_samples(str(tmp_path), params, "s", key, labels, draw)
  assert len(calls) == 2 and (out == 5).all()
  out = sample_cache.cached_samples(str(tmp_path), params, "s", key, labels, draw)
  assert len(calls) == 2  # replaced by a good file
  np.save(path, np.zeros((2, 2), np.uint8))  # wrong number of samples
  sample_cache.cached_samples(str(tmp_path), params, "s", key, labels, draw)
  assert len(calls) == 3
