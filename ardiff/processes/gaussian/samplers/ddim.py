"""DDIM (Song et al., 2021): x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma_eta^2) eps_hat + sigma_eta z.

In the scaled state x~ = x / sqrt(ab) = x0 + sigma eps this is x~_s = x0 + sqrt(sigma_s^2 -
v) eps + sqrt(v) z with v = eta^2 sigma_s^2 (1 - sigma_s^2 / sigma_t^2) (the VP sigma_eta^2
divided by ab_s). eta = 0 is Euler's method on the probability-flow ODE dx~/dsigma = eps
(first order); eta = 1 has DDPM's law.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import per_example_normal, register_solver


@register_solver("ddim", spacing="uniform", invertible=True, flow_order=1, eta=0.0)
def ddim_step(ctx, state, x, t, s, key, args):
  d = ctx.denoise(x, t)
  sigma_t, sigma_s = ctx.sigma(t), ctx.sigma(s)
  var = args["eta"] ** 2 * sigma_s**2 * jnp.maximum(1.0 - (sigma_s / sigma_t) ** 2, 0.0)
  x_scaled = (d.x0 + jnp.sqrt(jnp.maximum(sigma_s**2 - var, 0.0)) * d.eps
              + jnp.sqrt(var) * per_example_normal(key, x))
  return ctx.from_scaled(x_scaled, s), state
