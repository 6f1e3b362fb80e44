"""DPM-Solver++ multistep, orders 2 and 3 (Lu et al., 2022, "DPM-Solver++", data prediction).

With lambda = -log sigma (half the log-SNR) and the scaled state x~ = x / sqrt(ab), the exact
solution of the probability-flow ODE from t to s is x~_s = r x~_t + integral of the data
prediction D = x0_hat, r = sigma_s / sigma_t = exp(-h), h = lambda_s - lambda_t. The multistep
solvers approximate D by the polynomial through the current and previous x0 predictions
(m0, m1, m2 at lambda_t, lambda_t1, lambda_t2; r0 = (lambda_t - lambda_t1) / h,
r1 = (lambda_t1 - lambda_t2) / h):

  1st order (DDIM):  x~_s = r x~_t + (1 - r) m0
  2M:                x~_s = r x~_t + (1 - r) (m0 + (m0 - m1) / (2 r0))
  3M:                D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
                     D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1),
                     x~_s = r x~_t + (1 - r) m0 + ((r - 1) / h + 1) D1
                            - ((r - 1 + h) / h^2 - 1/2) D2

One model call per step. The first steps use the orders the history allows (1, then 2), and
the last step (to sigma = 0, where h is infinite) is first order, x_0 = m0, as in the paper's
and diffusers' implementations. Default spacing: uniform in log-SNR.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import register_solver


def _init(x):
  zero = jnp.zeros((), x.dtype)  # log-sigmas in the state's precision (float64 references)
  return {"m1": jnp.zeros_like(x), "m2": jnp.zeros_like(x), "lam1": zero, "lam2": zero,
          "count": jnp.zeros((), jnp.int32)}


def _dpmpp_step(ctx, state, x, t, s, key, args, *, order):
  m0 = ctx.denoise(x, t).x0
  sigma_t, sigma_s = ctx.sigma(t), ctx.sigma(s)
  lam_t = -jnp.log(sigma_t)
  new_state = {"m1": m0, "m2": state["m1"], "lam1": lam_t.astype(state["lam1"].dtype),
               "lam2": state["lam1"], "count": state["count"] + 1}
  if ctx.final:  # sigma_s = 0: r = 0 and the first-order update is x0_hat itself
    return ctx.from_scaled(m0, s), new_state
  count, m1, m2 = state["count"], state["m1"], state["m2"]
  h = jnp.log(sigma_t / sigma_s)
  r = sigma_s / sigma_t
  x_scaled = ctx.to_scaled(x, t)
  first = r * x_scaled + (1.0 - r) * m0
  r0 = jnp.where(count > 0, (lam_t - state["lam1"]) / h, 1.0)
  d1_0 = (m0 - m1) / r0
  out = jnp.where(count > 0, first + 0.5 * (1.0 - r) * d1_0, first)
  if order == 3:
    r1 = jnp.where(count > 1, (state["lam1"] - state["lam2"]) / h, 1.0)
    d1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    em1 = jnp.expm1(-h)  # r - 1, without cancellation for small h
    third = first + (em1 / h + 1.0) * d1 - ((em1 + h) / h**2 - 0.5) * d2
    out = jnp.where(count > 1, third, out)
  return ctx.from_scaled(out, s), new_state


register_solver("dpmpp_2m", spacing="logsnr", init=_init, flow_order=2)(
    functools.partial(_dpmpp_step, order=2))
register_solver("dpmpp_3m", spacing="logsnr", init=_init, flow_order=3)(
    functools.partial(_dpmpp_step, order=3))
