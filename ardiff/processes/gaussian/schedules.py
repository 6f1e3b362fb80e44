"""Noise schedules: how fast the Gaussian removal process destroys information.

Training uses integer timesteps t = 0..T. Index 0 is clean data (alpha_bar = 1); the forward
process is q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

Samplers may evaluate the model at any real time u in [0, 1] (u = t / T on the grid, which is
what the network sees). `Schedule.alpha_bar_at(u)` interpolates the log-SNR
lambda = log(alpha_bar / (1 - alpha_bar)) linearly between grid points (and sigma^2 = (1 - ab)
/ ab linearly on [0, 1/T], where lambda(0) = +inf), so it equals the trained alpha_bar exactly
at every grid point. The cosine schedule's closed form is not used between grid points because
it disagrees with the trained schedule at the end: its last beta is clipped at 0.999, giving
alpha_bar_T = 2.4e-9 where the closed form gives 0 (lambda = -inf). Measured at T = 1000,
the interpolant is within 0.23% (relative) of the closed form for u <= 0.99, and 11% in the
last interval, where the closed form falls to 0.

Solvers mostly work with the noise-to-signal ratio sigma = sqrt((1 - ab) / ab) (the EDM /
variance-exploding sigma: x / sqrt(ab) = x0 + sigma eps), and `time_at_sigma` inverts it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.registry import Registry

SCHEDULES: Registry = Registry("noise schedule")


class Schedule(NamedTuple):
  """Arrays of length T+1 indexed by integer timestep (entry 0 is t = 0, no noise)."""

  betas: jnp.ndarray  # betas[0] = 0
  alpha_bars: jnp.ndarray  # alpha_bars[0] = 1, decreasing towards ~0 at T
  log_snrs: jnp.ndarray  # log(ab / (1 - ab)), computed in float64; log_snrs[0] = +inf

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0] - 1

  def _locate(self, u: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Grid interval i (0..T-1) and fraction in [0, 1] of real times u in [0, 1]."""
    num = self.num_timesteps
    pos = jnp.clip(jnp.asarray(u, self.log_snrs.dtype), 0.0, 1.0) * num
    # Snap to a training step when within 1e-3 of one, so that t / T rounded in float32
    # reads the trained alpha_bar exactly (the likelihood bound depends on it).
    pos = jnp.where(jnp.abs(pos - jnp.round(pos)) < 1e-3, jnp.round(pos), pos)
    i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, num - 1)
    return i, pos - i

  def sigma_at(self, u: jax.Array) -> jax.Array:
    """Noise-to-signal ratio sqrt((1 - ab) / ab) at real times u in [0, 1] (any shape)."""
    i, frac = self._locate(u)
    lo, hi = self.log_snrs[jnp.maximum(i, 1)], self.log_snrs[i + 1]
    var_log = jnp.exp(-(lo + frac * (hi - lo)))  # log-SNR linear between grid points
    var_first = frac * jnp.exp(-self.log_snrs[1])  # sigma^2 linear on [0, 1/T]
    return jnp.sqrt(jnp.where(i == 0, var_first, var_log))

  def alpha_bar_at(self, u: jax.Array) -> jax.Array:
    """alpha_bar at real times u in [0, 1]; on the grid (u = t / T) exactly `alpha_bars[t]`."""
    i, frac = self._locate(u)
    on_grid = jnp.where(frac >= 1.0, self.alpha_bars[i + 1], self.alpha_bars[i])
    between = 1.0 / (1.0 + self.sigma_at(u) ** 2)
    return jnp.where((frac == 0.0) | (frac >= 1.0), on_grid, between)

  def time_at_sigma(self, sigma: jax.Array) -> jax.Array:
    """The inverse of `sigma_at`: the real time u in [0, 1] with sigma_at(u) = sigma
    (clipped to the schedule's range)."""
    num = self.num_timesteps
    lam = -2.0 * jnp.log(jnp.maximum(jnp.asarray(sigma, self.log_snrs.dtype), 1e-30))
    rising = -self.log_snrs[1:]  # increasing in t, for t = 1..T
    j = jnp.clip(jnp.searchsorted(rising, -lam), 1, num - 1)  # rising[j-1] <= -lam < rising[j]
    lo, hi = self.log_snrs[j], self.log_snrs[j + 1]
    u_log = (j + (lo - lam) / (lo - hi)) / num
    u_first = jnp.exp(-lam) / jnp.exp(-self.log_snrs[1]) / num
    return jnp.clip(jnp.where(lam >= self.log_snrs[1], u_first, u_log), 0.0, 1.0)


def _from_betas(betas: np.ndarray, dtype=jnp.float32) -> Schedule:
  betas = np.concatenate([[0.0], np.asarray(betas, np.float64)])
  alpha_bars = np.cumprod(1.0 - betas)
  with np.errstate(divide="ignore"):
    log_snrs = np.log(alpha_bars) - np.log1p(-alpha_bars)  # +inf at t = 0
  return Schedule(jnp.asarray(betas, dtype), jnp.asarray(alpha_bars, dtype),
                  jnp.asarray(log_snrs, dtype))


@SCHEDULES.register("linear")
def linear_schedule(num_timesteps: int, dtype=jnp.float32) -> Schedule:
  """Ho et al. (2020): betas linear from 1e-4 to 0.02 at T=1000, rescaled so other T match
  (clipped at 0.999: for very small T the rescaled betas would exceed 1)."""
  scale = 1000.0 / num_timesteps
  return _from_betas(np.clip(np.linspace(scale * 1e-4, scale * 0.02, num_timesteps), 0, 0.999),
                     dtype)


@SCHEDULES.register("cosine")
def cosine_schedule(num_timesteps: int, dtype=jnp.float32, offset: float = 0.008) -> Schedule:
  """Nichol & Dhariwal (2021): alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2), betas <= 0.999."""
  steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
  f = np.cos((steps + offset) / (1 + offset) * np.pi / 2) ** 2
  betas = np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  return _from_betas(betas, dtype)


def make_schedule(name: str, num_timesteps: int, dtype=jnp.float32) -> Schedule:
  """The named schedule with T = num_timesteps (float64 arrays with dtype=jnp.float64, for
  references; jax's x64 mode must then be on)."""
  if not isinstance(num_timesteps, int) or num_timesteps < 2:
    raise ValueError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
  return SCHEDULES.get(name)(num_timesteps, dtype)

