"""Deterministic inversion: data -> noise by running DDIM (Euler on the probability-flow ODE)
forwards in time, x~_s = x0_hat(x_t, t) + sigma_s eps_hat(x_t, t) for s > t.

`invert` visits the sampling grid in reverse (0 -> t_max), so `sample` with the same spacing,
steps and sigma_max maps its output back to (approximately) the data: each direction
evaluates eps at the start of its steps, so the round trip is exact only as the steps shrink
(its error is first order in the step size; the tests state the tolerances measured with the
exact eps of a Gaussian and with a trained model). Uses: encoding real data for editing,
interpolating between data points in noise space, and checking a model's ODE.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from ardiff.processes import randomness
from ardiff.processes.gaussian.samplers.base import (SAMPLERS, EpsFn, loop_grid, run_loop,
                                                     sampler_args, sampling_times)
from ardiff.processes.gaussian.schedules import Schedule


@functools.partial(jax.jit, static_argnames=("model_fn", "sampler", "return_trajectory"))
def _invert(model_fn, params, schedule, x0, cond, args, times, num_steps, *, sampler,
            return_trajectory):
  keys = randomness.example_keys(jax.random.key(0), x0.shape[0])  # unused: deterministic
  return run_loop(model_fn, params, schedule, x0, keys, cond, args, times, sampler=sampler,
                  to_zero=False, num_steps=num_steps, return_trajectory=return_trajectory)


def invert(model_fn: EpsFn, params: Any, schedule: Schedule, x0: jax.Array, cond: Any = None,
           *, sampler: str = "ddim", num_steps: int = 50, return_trajectory: bool = False,
           spacing: str | None = None, sigma_max: float | None = None):
  """Map data x0 [B, ...] (model space) to x at t_max, the noise `sample` would start from."""
  if not SAMPLERS.get(sampler).invertible:
    invertible = [n for n in SAMPLERS.names() if SAMPLERS.get(n).invertible]
    raise ValueError(f"sampler {sampler!r} cannot invert (it is stochastic or multistep); "
                     f"invertible: {', '.join(invertible)}")
  options = {k: v for k, v in (("spacing", spacing), ("sigma_max", sigma_max)) if v is not None}
  times = sampling_times(schedule, sampler, num_steps, options)[::-1].copy()
  args = sampler_args(sampler)  # the defaults: eta = 0, deterministic
  grid, n = loop_grid(times, schedule.log_snrs.dtype, pad=not return_trajectory)
  return _invert(model_fn, params, schedule, x0, cond, args, grid, n, sampler=sampler,
                 return_trajectory=return_trajectory)
