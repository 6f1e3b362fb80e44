"""DDPM ancestral sampling (Ho et al., 2020) between any two times t > s.

x_s ~ q(x_s | x_t, x0 = x0_hat), the true posterior with the model's x0 estimate. In the scaled
state x~ = x / sqrt(ab) = x0 + sigma eps (sigma = sqrt((1 - ab) / ab)) the posterior is

    x~_s = x0 + (sigma_s / sigma_t)^2 (x~_t - x0) + noise sigma_s sqrt(1 - (sigma_s / sigma_t)^2) z,

the same law as the usual c0 x0 + ct x_t + sqrt(var) z (written in sigma because 1 - ab loses
digits in float32 where ab ~ 1). With noise = 0 the chain follows the posterior *mean*, which
shrinks towards E[x0] at every step: the samples collapse toward the data mean.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import per_example_normal, register_solver


def posterior_step(ctx, d, x, t, s, key, noise):
  """x_s from x_t and the model's `Denoised` d at t: the posterior mean plus `noise` times the
  posterior's standard deviation times z (noise may be an array of x's shape: `ddpm_learned`)."""
  sigma_t, sigma_s = ctx.sigma(t), ctx.sigma(s)
  ratio2 = (sigma_s / sigma_t) ** 2
  z = per_example_normal(key, x)
  x_scaled = (d.x0 + ratio2 * (ctx.to_scaled(x, t) - d.x0)
              + noise * sigma_s * jnp.sqrt(1.0 - ratio2) * z)
  return ctx.from_scaled(x_scaled, s)


@register_solver("ddpm", spacing="uniform", noise=1.0)
def ddpm_step(ctx, state, x, t, s, key, args):
  return posterior_step(ctx, ctx.denoise(x, t), x, t, s, key, args["noise"]), state
