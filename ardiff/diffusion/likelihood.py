"""The variational bound of discrete-time Gaussian diffusion, in bits per dimension.

Images are integer levels 0..L-1 mapped to level centres in [-1, 1]. The decoder p(x0 | x1)
is a *discretised* Gaussian (Ho et al. 2020, eq. 13): the probability of a level is the
Gaussian mass of its bin (width 2/(L-1)), the two edge bins extending to -inf / +inf. The
data are discrete and the decoder is discrete, so no dequantisation is involved and the bound
is an upper bound on -log2 P(x) of the same 17-level pixels that the autoregressive models
score: the numbers are directly comparable.

    -log p(x0) <= KL(q(x_T | x0) || N(0, I))                                   prior
                  + sum_{t=2..T} KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))  diffusion
                  - E log p(x0 | x1)                                           reconstruction

p(x_{t-1} | x_t) has the posterior's variance and mean mu(x_t, x0_hat); the KL then reduces
to c0^2 |x0 - x0_hat|^2 / (2 var). The decoder's mean is x0_hat(x1) and its std sqrt(beta_1).
Every term is returned per example in bits per dimension, and they sum to `total`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ardiff.data.base import levels_to_unit
from ardiff.diffusion.schedules import Schedule
from ardiff.diffusion.targets import eps_to_x0, posterior_coefficients

TERMS = ("prior", "diffusion", "reconstruction")


def _log_diff_exp(a: jax.Array, b: jax.Array) -> jax.Array:
  """log(exp(a) - exp(b)) for a >= b, stable."""
  return a + jnp.log1p(-jnp.exp(jnp.minimum(b - a, -1e-12)))


def discretized_gaussian_log_probs(mean: jax.Array, std: jax.Array, num_levels: int) -> jax.Array:
  """Log-probabilities over the L levels [..., L] of a Gaussian discretised into level bins.

  Level k has centre c_k = 2k/(L-1) - 1 and bin [c_k - d, c_k + d], d = 1/(L-1); the first and
  last bins extend to -inf and +inf, so the L probabilities sum to one exactly.
  """
  centres = jnp.linspace(-1.0, 1.0, num_levels)
  half = 1.0 / (num_levels - 1)
  z_hi = (centres + half - mean[..., None]) / std[..., None]
  z_lo = (centres - half - mean[..., None]) / std[..., None]
  # log P(z_lo < Z < z_hi), computed on whichever tail keeps it accurate.
  upper = _log_diff_exp(log_ndtr(z_hi), log_ndtr(z_lo))
  lower_tail = _log_diff_exp(log_ndtr(-z_lo), log_ndtr(-z_hi))
  middle = jnp.where(z_lo > 0, lower_tail, upper)
  first = log_ndtr(z_hi)  # (-inf, c_0 + d]
  last = log_ndtr(-z_lo)  # [c_{L-1} - d, inf)
  out = middle.at[..., 0].set(first[..., 0])
  return out.at[..., -1].set(last[..., -1])


def _flat_sum(a: jax.Array) -> jax.Array:
  return a.reshape(a.shape[0], -1).sum(-1)


def _diffusion_term(eps_fn, params, schedule: Schedule, x0, y, t, key):
  """KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)) in nats per example, t >= 2 (int [B])."""
  ab = schedule.alpha_bars[t].reshape((-1,) + (1,) * (x0.ndim - 1))
  x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * jax.random.normal(key, x0.shape)
  x0_hat = eps_to_x0(schedule, eps_fn(params, x_t, t, y), x_t, t)
  c0, _, var = posterior_coefficients(schedule, t, t - 1)
  return c0**2 / (2 * var) * _flat_sum((x0 - x0_hat) ** 2)


def vlb_terms(eps_fn, params, schedule: Schedule, levels: jax.Array, y: jax.Array, key,
              num_levels: int, num_t_samples: int | None = None) -> dict[str, jax.Array]:
  """Bound terms per example in bits per dimension for integer images `levels` [B, ...].

  num_t_samples=None sums the diffusion term over all t = 2..T; an integer K estimates it
  without bias from K uniformly drawn timesteps ((T-1)/K times their sum).
  """
  T = schedule.num_timesteps
  x0 = levels_to_unit(levels, num_levels)
  b = x0.shape[0]
  dims = int(np.prod(x0.shape[1:]))
  k_prior, k_t, k_noise, k_rec = jax.random.split(key, 4)

  ab_T = schedule.alpha_bars[T]
  prior = 0.5 * _flat_sum(ab_T * x0**2 + (1 - ab_T) - 1 - jnp.log1p(-ab_T))

  if T < 2:
    diffusion = jnp.zeros(b)
  elif num_t_samples is None:
    def body(total, inputs):
      t, k = inputs
      return total + _diffusion_term(eps_fn, params, schedule, x0, y, jnp.full((b,), t), k), None
    diffusion, _ = jax.lax.scan(body, jnp.zeros(b),
                                (jnp.arange(2, T + 1), jax.random.split(k_noise, T - 1)))
  else:
    def body(total, k):
      kt, kn = jax.random.split(k)
      t = jax.random.randint(kt, (b,), 2, T + 1)
      return total + _diffusion_term(eps_fn, params, schedule, x0, y, t, kn), None
    diffusion, _ = jax.lax.scan(body, jnp.zeros(b), jax.random.split(k_t, num_t_samples))
    diffusion = diffusion * (T - 1) / num_t_samples

  t1 = jnp.ones((b,), jnp.int32)
  ab1 = schedule.alpha_bars[1]
  x1 = jnp.sqrt(ab1) * x0 + jnp.sqrt(1 - ab1) * jax.random.normal(k_rec, x0.shape)
  mean = eps_to_x0(schedule, eps_fn(params, x1, t1, y), x1, t1)
  std = jnp.full_like(mean, jnp.sqrt(schedule.betas[1]))
  logp = discretized_gaussian_log_probs(mean, std, num_levels)
  picked = jnp.take_along_axis(logp, jnp.asarray(levels, jnp.int32)[..., None], -1)[..., 0]
  reconstruction = -_flat_sum(picked)

  to_bpd = 1.0 / (dims * np.log(2.0))
  terms = {"prior": prior * to_bpd, "diffusion": diffusion * to_bpd,
           "reconstruction": reconstruction * to_bpd}
  terms["total"] = terms["prior"] + terms["diffusion"] + terms["reconstruction"]
  return terms


@functools.partial(jax.jit, static_argnames=("eps_fn", "num_levels", "num_t_samples"))
def _vlb_jit(eps_fn, params, schedule, levels, y, key, num_levels, num_t_samples):
  return vlb_terms(eps_fn, params, schedule, levels, y, key, num_levels, num_t_samples)


def bpd(process, params, images_levels: np.ndarray, labels: np.ndarray, num_levels: int, key,
        num_t_samples: int | None = None, batch_size: int = 300) -> dict[str, float]:
  """Mean bound terms (bits per dimension) of a GaussianDiffusion over a dataset."""
  images_levels, labels = np.asarray(images_levels), np.asarray(labels, np.int32)
  sums = {k: 0.0 for k in (*TERMS, "total")}
  for i, start in enumerate(range(0, len(images_levels), batch_size)):
    sl = slice(start, start + batch_size)
    terms = _vlb_jit(process.eps_fn, params, process.schedule, jnp.asarray(images_levels[sl]),
                     jnp.asarray(labels[sl]), jax.random.fold_in(key, i), num_levels,
                     num_t_samples)
    for k, v in terms.items():
      sums[k] += float(jnp.sum(v))
  return {k: v / len(images_levels) for k, v in sums.items()}
