"""DDIM (Song et al., 2021): x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma^2) eps_hat + sigma z.

eta = 0 is the deterministic probability-flow-like sampler; eta = 1 matches DDPM's variance.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import per_example_normal, register_sampler
from ardiff.processes.gaussian.targets import eps_to_x0


@register_sampler("ddim", eta=0.0)
def ddim_step(schedule, x_t, t, s, eps, key, args):
  ab_t, ab_s = schedule.alpha_bars[t], schedule.alpha_bars[s]
  x0 = eps_to_x0(schedule, eps, x_t, t)
  sigma = args["eta"] * jnp.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
  direction = jnp.sqrt(jnp.maximum(1 - ab_s - sigma**2, 0.0)) * eps
  return jnp.sqrt(ab_s) * x0 + direction + sigma * per_example_normal(key, x_t)
