"""DDPM ancestral sampling (Ho et al., 2020), on any strided subset of timesteps.

x_s = mu(x_t, x0_hat) + noise * sigma_ts z, with mu and sigma^2 the mean and variance of the
true posterior q(x_s | x_t, x0). With noise = 0 the chain follows the posterior *mean*, which
shrinks towards E[x0] at every step: the samples collapse toward the data mean.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import per_example_normal, register_sampler
from ardiff.processes.gaussian.targets import eps_to_x0, posterior_coefficients


@register_sampler("ddpm", noise=1.0)
def ddpm_step(schedule, x_t, t, s, eps, key, args):
  x0 = eps_to_x0(schedule, eps, x_t, t)
  c0, ct, var = posterior_coefficients(schedule, t, s)
  z = per_example_normal(key, x_t)
  return c0 * x0 + ct * x_t + args["noise"] * jnp.sqrt(var) * z
