"""Heun's second-order method on the probability-flow ODE (Karras et al., 2022, Algorithms 1-2).

In the scaled state x~ = x / sqrt(ab) the ODE is dx~/dsigma = eps(x, sigma). One step from
sigma_t to sigma_s:

    churn:    gamma = min(churn / N, sqrt(2) - 1),  sigma_hat = sigma_t (1 + gamma),
              x~_hat = x~_t + sqrt(sigma_hat^2 - sigma_t^2) z             (Algorithm 2; churn = 0: none)
    Euler:    d = eps(x_hat, sigma_hat),  x~' = x~_hat + (sigma_s - sigma_hat) d
    correct:  d' = eps(x', sigma_s),      x~_s = x~_hat + (sigma_s - sigma_hat) (d + d') / 2

Two model calls per step; the last step (sigma_s = 0, where d' is undefined) stays Euler, so N
steps cost 2N - 1 evaluations.

Default spacing: uniform in log-SNR, chosen on the closed-form mixture family (docs/solvers.md):
worst case at 9 / 19 / 39 NFE 1.28 / 0.151 / 0.032 against uniform's 1.07 / 0.251 / 0.098 and
Karras's 1.08 / 0.214 / 0.046 (DDIM at 20 NFE: 0.161). At 9 NFE (5 steps) no grid measured
brings Heun to DDIM's 0.289: its second call per step halves the steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import per_example_normal, register_solver


@register_solver("heun", spacing="logsnr", evals_per_step=2, final_evals=1, flow_order=2,
                 churn=0.0)
def heun_step(ctx, state, x, t, s, key, args):
  sigma_t, sigma_s = ctx.sigma(t), ctx.sigma(s)
  gamma = jnp.minimum(args["churn"] / ctx.num_steps, jnp.sqrt(2.0) - 1.0)
  # Churn may not take sigma beyond the schedule's end (sigma_at(1)).
  sigma_hat = jnp.minimum(sigma_t * (1.0 + gamma), jnp.maximum(ctx.sigma(1.0), sigma_t))
  t_hat = jnp.where(sigma_hat > sigma_t, ctx.schedule.time_at_sigma(sigma_hat), t)
  # (sigma_hat - sigma_t) (sigma_hat + sigma_t), not sigma_hat^2 - sigma_t^2: XLA fuses the
  # latter into a multiply-add that leaves the rounding error of sigma_t^2 (not 0) at churn = 0,
  # and its square root, ~3e-4 sigma in float32, would add noise to a deterministic solver.
  churn_std = jnp.sqrt(jnp.maximum((sigma_hat - sigma_t) * (sigma_hat + sigma_t), 0.0))
  x_scaled = ctx.to_scaled(x, t) + churn_std * per_example_normal(key, x)
  d = ctx.denoise(ctx.from_scaled(x_scaled, t_hat), t_hat).eps
  euler = x_scaled + (sigma_s - sigma_hat) * d
  if ctx.final:
    return ctx.from_scaled(euler, s), state
  d_next = ctx.denoise(ctx.from_scaled(euler, s), s).eps
  return ctx.from_scaled(x_scaled + (sigma_s - sigma_hat) * 0.5 * (d + d_next), s), state
