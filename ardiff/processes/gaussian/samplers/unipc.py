"""UniPC (Zhao et al., 2023): a multistep predictor (UniP-p) and corrector (UniC-p), data
prediction, B(h) = h ("bh1") or e^h - 1 ("bh2").

In the scaled state x~ = x / sqrt(ab), lambda = -log sigma, h = lambda_s - lambda_t and
r = sigma_s / sigma_t = e^-h, one step from t (model output m0 = x0_hat there) to s is

  x~_s = r x~_t + (1 - r) m0 - B(-h) sum_k rho_k D_k,    D_k = (m_k - m0) / r_k,

with m_k the outputs at earlier times and r_k = (lambda_k - lambda_t) / h. The weights solve
R rho = b, R the Vandermonde matrix of the r_k, b_i = (-h) phi_{i+1}(-h) i! / B(-h) (phi_1(x)
= (e^x - 1) / x, phi_{k+1}(x) = (phi_k(x) - 1/k!) / x); the predictor of order 2 and the
corrector of order 1 use rho = 1/2 instead, as the paper's code does. The corrector reuses the
evaluation at the predicted point: before predicting from t it corrects x~_t with the same
formula and nodes r_k plus r = 1 for m0 itself (order p + 1 from p + 1 outputs), so UniPC-p
converges at order p + 1 for one model call per step. Orders warm up (1, 2, ...), and the
last steps use min(order, steps left), as the paper's and diffusers' implementations do; the
step to sigma = 0 returns m0 (its correction cannot change x0_hat).

Options: order in {1, 2, 3} (default 2, diffusers' default), bh in {1, 2} (default 2).
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import register_solver

_HISTORY = 3  # model outputs kept: the order-3 corrector reads three earlier ones


def _init(x):
  zero = jnp.zeros((), x.dtype)  # log-sigmas in the state's precision (float64 references)
  return {"x_prev": jnp.zeros_like(x), "m": (jnp.zeros_like(x),) * _HISTORY,
          "lam": (zero,) * _HISTORY, "order": jnp.zeros((), jnp.int32),
          "count": jnp.zeros((), jnp.int32)}


def _x_phi(x):
  """x phi_2(x), x phi_3(x), x phi_4(x): a power series where |x| < 1 (the recursion loses a
  digit per level to cancellation at small x), the recursion elsewhere."""
  safe = jnp.where(jnp.abs(x) < 1.0, 1.0, x)
  phi, recursion = jnp.expm1(safe) / safe, []
  for k in (1, 2, 3):
    phi = (phi - 1.0 / math.factorial(k)) / safe
    recursion.append(safe * phi)
  series = [x * sum(x**j * (1.0 / math.factorial(j + k)) for j in range(12)) for k in (2, 3, 4)]
  return [jnp.where(jnp.abs(x) < 1.0, s, r) for s, r in zip(series, recursion)]


def _update(x_scaled, m0, others, h, bh, order, *, corrector):
  """r x~ + (1 - r) m0 - B(-h) sum rho_k D_k over the `order` - 1 earlier outputs `others`
  ((m_k, r_k) pairs) and, for the corrector, m_new at r = 1; order is traced (1..3)."""
  hh = -h
  big_b = jnp.where(bh == 1.0, hh, jnp.expm1(hh))
  b = [g * math.factorial(i) / big_b for i, g in enumerate(_x_phi(hh), start=1)]
  d = [(m - m0) / r for m, r in others]
  nodes = [r for _, r in others]
  if corrector:  # nodes r_1, r_2 and 1 (the new output, D = m_new - m0)
    r1, r2 = nodes[0], nodes[1]
    rho2 = [(b[1] - b[0]) / (r1 - 1.0)]
    rho2.append(b[0] - rho2[0])
    vander = jnp.stack([jnp.stack([jnp.ones_like(r1), jnp.ones_like(r1), jnp.ones_like(r1)]),
                        jnp.stack([r1, r2, jnp.ones_like(r1)]),
                        jnp.stack([r1**2, r2**2, jnp.ones_like(r1)])])
    rho3 = jnp.linalg.solve(vander, jnp.stack(b))
    res = {1: 0.5 * d[2], 2: rho2[0] * d[0] + rho2[1] * d[2],
           3: rho3[0] * d[0] + rho3[1] * d[1] + rho3[2] * d[2]}
  else:  # nodes r_1, r_2
    r1, r2 = nodes
    rho3 = [(b[1] - r2 * b[0]) / (r1 - r2), (r1 * b[0] - b[1]) / (r1 - r2)]
    res = {1: jnp.zeros_like(m0), 2: 0.5 * d[0], 3: rho3[0] * d[0] + rho3[1] * d[1]}
  total = jnp.where(order == 1, res[1], jnp.where(order == 2, res[2], res[3]))
  return jnp.exp(-h) * x_scaled - jnp.expm1(-h) * m0 - big_b * total


def _ratios(lams, lam_from, h, count):
  """(lambda_k - lambda_from) / h for the kept history, with distinct placeholders (-1, -2,
  -3) where a step has no history yet (never selected: the order is capped by the count)."""
  return [jnp.where(count > k, (lam - lam_from) / h, -(k + 1.0)) for k, lam in enumerate(lams)]


@register_solver("unipc", spacing="logsnr", init=_init, flow_order=3, order=2.0, bh=2.0,
                 choices={"order": (1, 2, 3), "bh": (1, 2)})
def unipc_step(ctx, state, x, t, s, key, args):
  m_new = ctx.denoise(x, t).x0
  sigma_t = ctx.sigma(t)
  lam_t = -jnp.log(sigma_t)
  count, m, lam = state["count"], state["m"], state["lam"]
  x_scaled = ctx.to_scaled(x, t)
  # UniC: correct x~_t, predicted from x~_prev at lam[0] by UniP of order state["order"].
  h_c = lam_t - lam[0]
  safe_h_c = jnp.where(count > 0, h_c, 1.0)
  r_c = _ratios(lam[1:], lam[0], safe_h_c, count - 1)
  others = [(m[1], r_c[0]), (m[2], r_c[1]), (m_new, jnp.ones_like(h_c))]
  corrected = _update(state["x_prev"], m[0], others, safe_h_c, args["bh"], state["order"],
                      corrector=True)
  x_scaled = jnp.where(count > 0, corrected, x_scaled)
  new_state = {"x_prev": x_scaled, "m": (m_new, m[0], m[1]),
               "lam": (lam_t.astype(lam[0].dtype), lam[0], lam[1]), "count": count + 1}
  if ctx.final:  # sigma_s = 0: x~_0 = m_new, whatever the correction
    return ctx.from_scaled(m_new, s), {**new_state, "order": jnp.ones((), jnp.int32)}
  order = jnp.minimum(jnp.minimum(args["order"].astype(jnp.int32), count + 1),
                      ctx.num_steps - count)
  h = jnp.log(sigma_t / ctx.sigma(s))
  r_p = _ratios(lam[:2], lam_t, h, count)
  out = _update(x_scaled, m_new, [(m[0], r_p[0]), (m[1], r_p[1])], h, args["bh"], order,
                corrector=False)
  return ctx.from_scaled(out, s), {**new_state, "order": order}
