"""Masking schedules alpha(t): the probability that a pixel is still unmasked at time t.

alpha(0) = 1 (the data), alpha(1) = 0 (all masked), decreasing. Each schedule gives alpha and
its derivative, which weighs the continuous-time ELBO (`ardiff.processes.masked.process`):

  linear      alpha = 1 - t                   alpha' = -1
  cosine      alpha = 1 - sin(pi/2 t)         alpha' = -(pi/2) cos(pi/2 t)
  polynomial  alpha = 1 - t^p                 alpha' = -p t^(p - 1)

The ELBO does not depend on the schedule (substitute u = 1 - alpha(t)); its Monte-Carlo
variance and the sampler's steps do.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

NAMES = ("linear", "cosine", "polynomial")


@dataclasses.dataclass(frozen=True)
class MaskingSchedule:
  name: str = "linear"
  power: float = 2.0  # polynomial only

  def __post_init__(self):
    if self.name not in NAMES:
      raise ValueError(f"masking schedule must be one of {NAMES}, got {self.name!r}")
    if not (isinstance(self.power, (int, float)) and self.power > 0):
      raise ValueError(f"masking schedule power must be a number > 0, got {self.power!r}")

  def alpha(self, t):
    return 1.0 - self.masked(t)

  def masked(self, t):
    """1 - alpha(t), the masking probability, computed directly (no cancellation near t = 0,
    where the loss divides by it): t, sin(pi/2 t), t^p."""
    if self.name == "linear":
      return t
    if self.name == "cosine":
      return jnp.sin(math.pi / 2 * t)
    return t ** self.power

  def dalpha(self, t):
    """d alpha / dt (<= 0)."""
    if self.name == "linear":
      return -jnp.ones_like(t)
    if self.name == "cosine":
      return -(math.pi / 2) * jnp.cos(math.pi / 2 * t)
    return -self.power * t ** (self.power - 1)
