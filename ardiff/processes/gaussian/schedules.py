"""Discrete noise schedules: how fast the Gaussian removal process destroys information.

Timesteps are integers t = 0..T. Index 0 is clean data (alpha_bar = 1); the forward process
is q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ardiff.registry import Registry

SCHEDULES: Registry = Registry("noise schedule")


class Schedule(NamedTuple):
  """Arrays of length T+1 indexed by integer timestep (entry 0 is t = 0, no noise)."""

  betas: jnp.ndarray  # betas[0] = 0
  alpha_bars: jnp.ndarray  # alpha_bars[0] = 1, decreasing towards ~0 at T

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0] - 1


def _from_betas(betas: np.ndarray) -> Schedule:
  betas = np.concatenate([[0.0], np.asarray(betas, np.float64)])
  alpha_bars = np.cumprod(1.0 - betas)
  return Schedule(jnp.asarray(betas, jnp.float32), jnp.asarray(alpha_bars, jnp.float32))


@SCHEDULES.register("linear")
def linear_schedule(num_timesteps: int) -> Schedule:
  """Ho et al. (2020): betas linear from 1e-4 to 0.02 at T=1000, rescaled so other T match
  (clipped at 0.999: for very small T the rescaled betas would exceed 1)."""
  scale = 1000.0 / num_timesteps
  return _from_betas(np.clip(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps), 0, 0.999))


@SCHEDULES.register("cosine")
def cosine_schedule(num_timesteps: int, offset: float = 0.008) -> Schedule:
  """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2), betas <= 0.999."""
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + offset) / (1 + offset) * np.pi / 2) ** 2
  betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  return _from_betas(betas)


def make_schedule(name: str, num_timesteps: int) -> Schedule:
  if not isinstance(num_timesteps, int) or num_timesteps < 1:
    raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
  return SCHEDULES.get(name)(num_timesteps)


def strided_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """`num_steps + 1` decreasing integer timesteps from T to 0, as evenly spaced as possible."""
  if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
    raise ValueError(
        f"num_steps must be an integer in 1..T={num_timesteps}, got {num_steps!r}")
  ts = np.round(np.linspace(num_timesteps, 0, num_steps + 1)).astype(np.int32)
  assert np.all(np.diff(ts) < 0), ts  # distinct because num_steps <= T
  return ts
