"""A tiny diffusion training setup shared by the training tests (and their subprocesses)."""

import jax
import numpy as np

from ardiff.data.spiral import spiral_dataset
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.models.mlp import MLPDenoiser
from ardiff.train import TrainConfig


def tiny_setup(steps=6, batch_size=32, **overrides):
  data = spiral_dataset(num_train=256, num_test=16)
  process = GaussianDiffusion(MLPDenoiser(3, width=32, depth=2), num_classes=3,
                              num_timesteps=100)
  cfg = TrainConfig(steps=steps, batch_size=batch_size, learning_rate=1e-2, warmup_steps=2,
                    log_every=1, checkpoint_every=100, **overrides)
  return process, data, cfg


def assert_same_leaves(a, b):
  """Every leaf of two pytrees equal, bit for bit (and as many leaves)."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
