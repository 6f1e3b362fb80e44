"""`sample_history` of the Gaussian processes: the state after each step in data space, one
float32 array [S, B, *data_shape] whose last entry is the sample drawn with the same key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.models.mlp import MLPDenoiser
from ardiff.processes.gaussian.learned_variance import LearnedVarianceDiffusion
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.processes.spec import parse_spec
from tests.processes.gaussian.test_learned_variance import TinyNet  # a cheap image model

L = 17
LABELS = np.array([0, 1, 2], np.int32)


def _init(process, x):
  params = process.init_params(jax.random.key(0), {"x": x, "y": jnp.zeros(len(x), jnp.int32)})
  # Random output weights, so that the model's prediction is far from 0 and steps differ.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                   for p, k in zip(leaves, keys)])


def _points():
  process = GaussianDiffusion(MLPDenoiser(3, width=16, depth=1), num_classes=3,
                              num_timesteps=50, data_shape=(2,), data_center=(3.0, -1.0),
                              data_scale=(2.0, 0.5))
  return process, _init(process, jnp.zeros((2, 2)))


def _images(learned=False):
  cls = LearnedVarianceDiffusion if learned else GaussianDiffusion
  process = cls(TinyNet(2 if learned else 1), 3, "cosine", 20, data_shape=(2, 2, 1),
                num_levels=L, clip_x0=1.0)
  return process, _init(process, jnp.zeros((2, 2, 2, 1)))


def _check(process, params, spec):
  history = process.sample_history(params, jax.random.key(4), LABELS, spec)
  sample = np.asarray(process.sample(params, jax.random.key(4), LABELS, spec))
  steps = parse_spec(spec).steps
  assert isinstance(history, np.ndarray) and history.dtype == np.float32, spec
  assert history.shape == (steps, 3, *process.data_shape), (spec, history.shape)
  assert np.all(np.isfinite(history)) and not np.allclose(history[0], history[-1]), spec
  return history, sample


@pytest.mark.parametrize("spec", ["ddim:4", "ddpm:3", "heun:3"])
def test_points_history_ends_in_the_sample_in_data_space(spec):
  """Points: de-standardised as `to_data` (heun:3 has 5 evaluations but 3 states)."""
  process, params = _points()
  history, sample = _check(process, params, spec)
  np.testing.assert_array_equal(history[-1], sample)
  # Data space, not model space: the spread follows data_scale (2 and 0.5) around the center.
  spread = history[-1].std(0)
  assert spread[0] > spread[1], spread


@pytest.mark.parametrize("learned,spec", [(False, "ddim:5"), (False, "ddpm:4"),
                                          (True, "ddpm_learned:4"), (True, "ddim:3")])
def test_image_history_is_the_unrounded_level_scale(learned, spec):
  """Images: (x + 1) / 2 (L - 1) clipped to [0, L - 1], unrounded; rounded, the last entry is
  the sample (uint8 levels)."""
  process, params = _images(learned)
  history, sample = _check(process, params, spec)
  assert sample.dtype == np.uint8
  np.testing.assert_array_equal(np.round(history[-1]).astype(np.uint8), sample)
  assert history.min() >= 0 and history.max() <= L - 1
  assert np.any(history[-1] != np.round(history[-1]))  # not rounded
