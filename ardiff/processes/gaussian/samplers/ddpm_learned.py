"""DDPM ancestral sampling with a per-pixel learned variance (Nichol & Dhariwal, 2021), on any
time grid (respacing): the registered solver `ddpm_learned`.

The model function returns two things, `eps_frac_fn(params, x, t [B], cond) -> (eps, frac)`:
the noise prediction and the interpolation fraction f (x's shape, or anything that broadcasts
to it; f = (v + 1) / 2 for a network output v). The solver loop hands f to the step as
`Denoised.frac`. One step from time t to an earlier time s of the sampling grid (real times in
[0, 1]) treats (t, s) as one step of a *respaced* chain (Nichol & Dhariwal, section 4):

    beta'   = 1 - ab_t / ab_s                           the respaced chain's beta
    beta~'  = (1 - ab_s) / (1 - ab_t) beta'             its posterior variance
    log Sigma = f log beta' + (1 - f) log beta~'
    x_s = mu(x_t, x0_hat) + sqrt(Sigma) z,

mu the posterior mean of q(x_s | x_t, x0) with x0 replaced by x0_hat (from eps), exactly the
`ddpm` solver's. With f = 0 this *is* the `ddpm` solver (Sigma = beta~', the same noise draws),
and so is a model function without a fraction (eps only: then no scale is applied at all); with
f = 1 it is DDPM with the "large" variance beta' (Ho et al.'s sigma^2 = beta). As in the `ddpm`
solver the step is written in the scaled state x~ = x / sqrt(ab) = x0 + sigma eps, where beta~'
is sigma_s^2 (1 - r^2) ab_s with r = sigma_s / sigma_t, so only the ratio

    Sigma / beta~' = (beta' / beta~')^f = ((1 - ab_t) / (1 - ab_s))^f

is new; 1 - ab = sigma^2 / (1 + sigma^2) is taken from sigma (no float32 1 - ab near ab = 1).
The last step (s = 0, where beta~' = 0) returns x0_hat without noise, as DDPM does, so its
variance never matters for sampling (it does for the likelihood's decoder: see
`ardiff.processes.gaussian.learned_variance`). Any eps model can be sampled with a fixed
variance through `FixedFraction` (f = 1: fixed beta; f = 0: fixed beta~).

Caveat: a network trained on the T-step chain outputs one f per (x_t, t); on a respaced grid
the same f interpolates between the respaced endpoints, which is Nichol & Dhariwal's rule, not
the optimal variance of the respaced step (that depends on s too).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ardiff.processes.gaussian.samplers.base import register_solver
from ardiff.processes.gaussian.samplers.ddpm import posterior_step
from ardiff.processes.guidance import combine, stream_inputs, stream_labels

# eps_frac_fn(params, x [B, ...], t float [B] in [0, 1], cond) -> (eps_hat, frac)
EpsFracFn = Callable[[Any, jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class FixedFraction:
  """An eps-only model function with a constant fraction: frac = 1 is the fixed variance
  beta (Ho et al.'s "large"), frac = 0 the fixed posterior variance beta~ ("small").

  Frozen and hashable when `eps_fn` is (a method of a frozen process, a module-level function),
  so it can be the static model argument of the compiled loops.
  """

  eps_fn: Callable[..., jax.Array]
  frac: float

  def __call__(self, params, x, t, cond):
    return self.eps_fn(params, x, t, cond), jnp.full(x.shape, self.frac, x.dtype)


def respaced_variances(ab_t, ab_s):
  """(beta', beta~') of the respaced step t -> s from alpha_bar at t and s (any array type):
  beta' = 1 - ab_t / ab_s, beta~' = (1 - ab_s) / (1 - ab_t) beta' (the textbook forms)."""
  beta = 1.0 - ab_t / ab_s
  return beta, (1.0 - ab_s) / (1.0 - ab_t) * beta


def log_beta_ratio(sigma_t: jax.Array, sigma_s: jax.Array) -> jax.Array:
  """log(beta' / beta~') = log((1 - ab_t) / (1 - ab_s)) >= 0 from the noise-to-signal ratios
  (1 - ab = sigma^2 / (1 + sigma^2)); s must be > 0 (at s = 0 it is +inf)."""
  return (2.0 * jnp.log(sigma_t) - jnp.log1p(sigma_t**2)
          - 2.0 * jnp.log(sigma_s) + jnp.log1p(sigma_s**2))


@register_solver("ddpm_learned", spacing="uniform")
def ddpm_learned_step(ctx, state, x, t, s, key, args):
  """`ddpm`'s step with its noise scaled by sqrt(Sigma / beta~') = (beta' / beta~')^(f / 2)."""
  d = ctx.denoise(x, t)
  if d.frac is None or ctx.final:  # eps only: ddpm itself; s = 0: no noise whatever f is
    return posterior_step(ctx, d, x, t, s, key, 1.0), state
  scale = jnp.exp(0.5 * d.frac * log_beta_ratio(ctx.sigma(t), ctx.sigma(s))).astype(x.dtype)
  return posterior_step(ctx, d, x, t, s, key, scale), state


@functools.lru_cache(maxsize=None)  # same fn -> same guided fn, so jit caches hit
def guided(fn: EpsFracFn) -> EpsFracFn:
  """Classifier-free guidance of (eps, frac): eps = eps(neg) + w (eps(y) - eps(neg)) as in
  `ardiff.processes.guidance`; frac from the conditional stream (as GLIDE does)."""

  def guided_fn(params, x, t, cond):
    eps, frac = fn(params, stream_inputs(x), stream_inputs(t), stream_labels(cond))
    frac = jnp.broadcast_to(frac, eps.shape)
    return combine(eps, cond["w"]), jnp.split(frac, 2)[0]

  return guided_fn
