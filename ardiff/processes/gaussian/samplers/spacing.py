"""Where a sampler evaluates the model: `num_steps + 1` decreasing real times from t_max to 0.

Every spacing starts at t_max, the time whose noise-to-signal ratio sigma = sqrt((1 - ab) / ab)
is `sigma_max` (80 by default, EDM's value; t_max = 1 when the schedule never gets that
noisy), and ends at 0 (clean data). Why not start at t = 1: the cosine schedule ends at
alpha_bar = 2.4e-9 (sigma = 2e4), where x0_hat = (x - sqrt(1 - ab) eps_hat) / sqrt(ab) turns an
eps error delta into an x0 error 2e4 delta, and the first step of a 50-step sampler carries
sqrt(ab_s) 2e4 delta = 620 delta into a state whose spread is 1: DDIM-50 on unclipped data then
diverges. Starting at sigma_max = 80 instead costs nothing measurable: x_T ~ N(0, I) differs
from the true marginal at t_max by sqrt(ab) x0 = x0 / 80, and the probability-flow map shrinks
an offset at sigma_max by a factor sigma_data / sigma_max on its way to t = 0.

  uniform    uniform in t from t_max (with sigma_max = inf this is diffusers' "trailing"
             spacing: T, T - T/n, ..., 0 in this project's 1-based timesteps)
  trailing   the same, rounded down to training timesteps t / T (the integer grid the
             network was trained on; this project's samplers used it before continuous time)
  quadratic  t_max ((n - i) / n)^2 (Song et al., 2021, DDIM), dense near the data
  logsnr     uniform in log-SNR between t_max and the least noisy training step t = 1/T, then 0
             (DPM-Solver's recommendation for pixel space)
  karras     sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
             rho = 7, sigma_min = sigma(1/T), then 0 (Karras et al., 2022, eq. 5)

Spacings are computed on the host in float64 from the schedule's arrays, and reach the compiled
loop padded to a bucket (`ardiff.processes.padded`), so the step count is data there.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ardiff.processes import padded
from ardiff.processes.gaussian.schedules import Schedule
from ardiff.registry import Registry

SPACINGS: Registry[Callable[..., np.ndarray]] = Registry("time-step spacing")
KARRAS_RHO = 7.0


def _on_bucket(fn, values) -> np.ndarray:
  """fn (an elementwise schedule function, run eagerly) at `values`, evaluated on the values
  padded to their bucket: each eager op then compiles once per bucket, not once per step count
  (elementwise, so the padding changes no value)."""
  values = np.asarray(values)
  flat = values.reshape(-1)
  out = np.asarray(fn(padded.pad_rows(flat) if flat.size else flat), np.float64)
  return out[:flat.size].reshape(values.shape)


def _sigma(schedule: Schedule, u) -> np.ndarray:
  return _on_bucket(schedule.sigma_at, u)


def _time(schedule: Schedule, sigma) -> np.ndarray:
  return _on_bucket(schedule.time_at_sigma, sigma)


def start_time(schedule: Schedule, sigma_max: float) -> float:
  """t_max: the time whose sigma is sigma_max (1 when the schedule stays below it)."""
  if not sigma_max > 0:
    raise ValueError(f"sigma_max must be positive, got {sigma_max!r}")
  if sigma_max >= float(_sigma(schedule, 1.0)):
    return 1.0
  return float(_time(schedule, sigma_max))


@SPACINGS.register("uniform")
def uniform(schedule: Schedule, n: int, t_max: float) -> np.ndarray:
  return np.linspace(t_max, 0.0, n + 1)


@SPACINGS.register("trailing")
def trailing(schedule: Schedule, n: int, t_max: float) -> np.ndarray:
  top = int(np.floor(t_max * schedule.num_timesteps + 1e-6))
  if n > top:
    raise ValueError(f"spacing 'trailing' has only {top} training timesteps below sigma_max; "
                     f"asked for {n} steps")
  return np.round(np.linspace(top, 0, n + 1)) / schedule.num_timesteps


@SPACINGS.register("quadratic")
def quadratic(schedule: Schedule, n: int, t_max: float) -> np.ndarray:
  return t_max * (np.arange(n, -1, -1) / n) ** 2


def _sigmas_then_zero(schedule: Schedule, sigmas: np.ndarray) -> np.ndarray:
  return np.concatenate([_time(schedule, sigmas), [0.0]])


@SPACINGS.register("logsnr")
def logsnr(schedule: Schedule, n: int, t_max: float) -> np.ndarray:
  hi, lo = np.log(_sigma(schedule, t_max)), np.log(_sigma(schedule, 1.0 / schedule.num_timesteps))
  return _sigmas_then_zero(schedule, np.exp(np.linspace(hi, lo, n)))


@SPACINGS.register("karras")
def karras(schedule: Schedule, n: int, t_max: float) -> np.ndarray:
  hi = _sigma(schedule, t_max) ** (1 / KARRAS_RHO)
  lo = _sigma(schedule, 1.0 / schedule.num_timesteps) ** (1 / KARRAS_RHO)
  return _sigmas_then_zero(schedule, np.linspace(hi, lo, n) ** KARRAS_RHO)


def time_grid(schedule: Schedule, num_steps: int, spacing: str = "uniform",
              sigma_max: float = 80.0) -> np.ndarray:
  """`num_steps + 1` strictly decreasing times in [0, 1], from t_max to 0 (float64)."""
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  fn = SPACINGS.get(spacing)
  ts = np.asarray(fn(schedule, int(num_steps), start_time(schedule, sigma_max)), np.float64)
  ts[-1] = 0.0
  if not np.all(np.diff(ts) < 0):
    raise ValueError(f"spacing {spacing!r} with {num_steps} steps repeats a time (the schedule "
                     "is too coarse for so many steps); use fewer steps or another spacing")
  return ts
