"""The variational bound of discrete-time Gaussian diffusion, in bits per dimension.

Images are integer grey levels 0..L-1 (digits: L = 17), mapped to the level centres
c_k = 2k/(L-1) - 1 in [-1, 1] by `levels_to_unit`. The decoder p(x0 | x1) is a *discretised*
Gaussian (Ho et al. 2020, eq. 13): the probability of level k is the Gaussian mass of its bin
[c_k - 1/(L-1), c_k + 1/(L-1)], the two edge bins extending to -inf and +inf, so each pixel gets
a proper distribution over the L levels. Data and decoder are both discrete, so no
dequantisation is needed (or done): the bound is an upper bound on -log2 P(x) of exactly the
L-level pixels that an autoregressive model scores with an L-way softmax, and the two bits per
dimension are directly comparable.

    -log p(x0) <= E_q[ KL(q(x_T | x0) || N(0, I))                                  prior
                       + sum_{t=2..T} KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))  diffusion
                       - log p(x0 | x1) ]                                           reconstruction

p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), beta_tilde_t I) has the posterior's variance
beta_tilde_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t and the posterior mean with x0 replaced by the
model's x0_hat (from its eps prediction). The two Gaussians share a variance, so the KL is the
squared mean gap over 2 beta_tilde_t, which in eps space is (Ho et al. 2020, eq. 12)

    KL_t = beta_t / (2 alpha_t (1 - ab_{t-1})) |eps - eps_hat(x_t, t)|^2,

with eps the noise that made x_t. This form is used because it stays finite and accurate in
float32 everywhere: beta_tilde_t is zero only at t = 1 (ab_0 = 1), which is exactly why t = 1 is
the decoder term and not a KL; 1 - ab_{t-1} is computed from the betas (expm1 of a cumulative
log1p sum) rather than by subtracting a float32 alpha_bar near 1; and no x0_hat = x_t / sqrt(ab_t)
is formed at large t, where it would amplify rounding by 1/sqrt(ab_t). The decoder has mean
x0_hat(x1) and standard deviation sqrt(beta_1) (Ho et al.'s sigma_1^2 = beta_1).

Learned variances (`learned_variance.py`): a model function that returns (eps_hat, f) instead
of eps_hat alone gets p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), Sigma_t) with, per pixel,
log Sigma_t = f log beta_t + (1 - f) log beta~_t (Nichol & Dhariwal, 2021). Both Gaussians are
diagonal; with d = log Sigma_t - log beta~_t = f log(beta_t / beta~_t) the KL per pixel is

    KL_t = 1/2 [ expm1(-d) + d + exp(-d) beta_t / (alpha_t (1 - ab_{t-1})) (eps - eps_hat)^2 ],

(d = 0: the fixed form above), log(beta_t / beta~_t) = log(1 - ab_t) - log(1 - ab_{t-1}) from
the betas. The decoder's variance, where beta~_1 = 0, interpolates between beta~_2 and beta_1
(the paper's code clips log beta~_1 to log beta~_2): log Sigma_1 = f log beta_1 + (1 - f) log
beta~_2. So f = 1 everywhere is fixed beta, and the fixed bound above is f = 0 for t >= 2 with
f = 1 at t = 1 (tested term by term).

Each term is a one-sample estimate over the forward noise (one x_t per timestep per example);
the sum over t is exact (all T-1 terms) or, with `num_t_samples=K`, the unbiased estimate
(T-1)/K * sum of K terms at uniformly drawn t in 2..T. Every term is returned per example in
bits per dimension, and they sum to `total`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from ardiff.data.levels import levels_to_unit
from ardiff.processes.gaussian.samplers.base import EpsFn
from ardiff.processes.gaussian.schedules import Schedule
from ardiff.processes.gaussian.targets import bcast, eps_to_x0, noisy_sample_and_target

TERMS = ("prior", "diffusion", "reconstruction")


def _log_diff_exp(a: jax.Array, b: jax.Array) -> jax.Array:
  """log(exp(a) - exp(b)) for a >= b; a gap below float resolution gives ~log(1e-30), not -inf."""
  return a + jnp.log(-jnp.expm1(jnp.minimum(b - a, -1e-30)))


def discretized_gaussian_log_probs(mean: jax.Array, std: jax.Array, num_levels: int) -> jax.Array:
  """Log-probabilities [..., L] of N(mean, std^2) discretised into the L level bins.

  mean and std broadcast against each other (std > 0 is the standard deviation, not a log
  scale). Level k has centre c_k = 2k/(L-1) - 1 and bin [c_k - d, c_k + d], d = 1/(L-1); the
  first and last bins extend to -inf and +inf, so the L probabilities sum to one. Each bin's
  mass is taken from whichever Gaussian tail keeps it accurate, so far-tail bins get finite,
  accurate log-probabilities instead of log(0).
  """
  if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
    raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
  mean, std = jnp.broadcast_arrays(jnp.asarray(mean), jnp.asarray(std))
  centres = jnp.linspace(-1.0, 1.0, num_levels)
  half = 1.0 / (num_levels - 1)
  z_hi = (centres + half - mean[..., None]) / std[..., None]
  z_lo = (centres - half - mean[..., None]) / std[..., None]
  below = _log_diff_exp(log_ndtr(z_hi), log_ndtr(z_lo))  # Phi(z_hi) - Phi(z_lo)
  above = _log_diff_exp(log_ndtr(-z_lo), log_ndtr(-z_hi))  # same mass via the upper tail
  inner = jnp.where(z_lo > 0, above, below)
  out = inner.at[..., 0].set(log_ndtr(z_hi[..., 0]))  # (-inf, c_0 + d]
  return out.at[..., -1].set(log_ndtr(-z_lo[..., -1]))  # [c_{L-1} - d, +inf)


def _flat_sum(a: jax.Array) -> jax.Array:
  return a.reshape(a.shape[0], -1).sum(-1)


def _one_minus_alpha_bars(schedule: Schedule) -> jax.Array:
  """1 - alpha_bar_t for t = 0..T, accurate where alpha_bar is close to 1."""
  return -jnp.expm1(jnp.cumsum(jnp.log1p(-schedule.betas)))


def _minus_x_minus_log1m(a: jax.Array) -> jax.Array:
  """-a - log(1 - a) = sum_{k>=2} a^k / k >= 0, without the cancellation at small a."""
  series = sum(a**k / k for k in range(2, 10))  # truncation < a^10 / 10: ~1e-10 relative at 0.1
  return jnp.where(a < 0.1, series, -a - jnp.log1p(-a))


def log_beta_ratios(schedule: Schedule) -> jax.Array:
  """log(beta_t / beta~_t) = log(1 - ab_t) - log(1 - ab_{t-1}) for t = 0..T (entries 0 and 1
  are meaningless: beta~_1 = 0; they are set to 0)."""
  log_1m = jnp.log(jnp.maximum(_one_minus_alpha_bars(schedule), 1e-30))
  ratio = log_1m[1:] - log_1m[:-1]
  return jnp.concatenate([jnp.zeros(1, ratio.dtype), ratio]).at[1].set(0.0)


def diffusion_kl(schedule: Schedule, t: jax.Array, eps: jax.Array, eps_hat: jax.Array,
                 frac: jax.Array | None = None) -> jax.Array:
  """KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) per pixel, in nats, for integer t >= 2 [B];
  eps is the noise that made x_t. frac None: Sigma_t = beta~_t; else the learned
  interpolation fraction f (module doc for both formulas)."""
  beta = bcast(schedule.betas[t], eps)
  weight = beta / ((1.0 - beta) * bcast(_one_minus_alpha_bars(schedule)[t - 1], eps))
  if frac is None:
    return 0.5 * weight * (eps - eps_hat) ** 2
  d = frac * bcast(log_beta_ratios(schedule)[t], eps)
  return 0.5 * (jnp.expm1(-d) + d + jnp.exp(-d) * weight * (eps - eps_hat) ** 2)


def decoder_log_variance(schedule: Schedule, frac: jax.Array) -> jax.Array:
  """log Sigma_1 = f log beta_1 + (1 - f) log beta~_2 (beta~_1 = 0 clipped to beta~_2)."""
  om = _one_minus_alpha_bars(schedule)
  log_beta1 = jnp.log(schedule.betas[1])
  log_beta_tilde2 = jnp.log(om[1]) - jnp.log(om[2]) + jnp.log(schedule.betas[2])
  return frac * log_beta1 + (1.0 - frac) * log_beta_tilde2


def decoder_nll(schedule: Schedule, x1, eps_hat, frac, levels, num_levels: int) -> jax.Array:
  """-log p(x0 = levels | x1) per pixel, in nats: the discretised Gaussian with mean
  x0_hat(x1) and variance beta_1 (frac None) or the learned Sigma_1."""
  t1 = jnp.ones((x1.shape[0],), jnp.int32)
  mean = eps_to_x0(schedule, eps_hat, x1, t1)
  if frac is None:
    std = jnp.sqrt(schedule.betas[1])
  else:
    std = jnp.exp(0.5 * decoder_log_variance(schedule, frac))
  logp = discretized_gaussian_log_probs(mean, std, num_levels)
  return -jnp.take_along_axis(logp, levels.astype(jnp.int32)[..., None], -1)[..., 0]


@functools.partial(jax.jit, static_argnames=("model_fn", "num_levels", "num_t_samples"))
def _vlb_terms(model_fn, params, schedule, levels, y, key, *, num_levels, num_t_samples):
  T = schedule.num_timesteps
  x0 = levels_to_unit(levels, num_levels)
  b = x0.shape[0]
  k_diff, k_rec = jax.random.split(key)

  def model(x, t):  # (eps_hat, frac or None) at integer t [B]
    out = model_fn(params, x, t / T, y)
    eps, frac = out if isinstance(out, tuple) else (out, None)
    return eps, None if frac is None else jnp.broadcast_to(frac, x.shape)

  ab_T = schedule.alpha_bars[T]
  prior = 0.5 * _flat_sum(ab_T * x0**2 + _minus_x_minus_log1m(ab_T))

  if T < 2:
    diffusion = jnp.zeros(b)
  else:
    if num_t_samples is None:  # every t = 2..T, each with its own noise
      ts = jnp.broadcast_to(jnp.arange(2, T + 1)[:, None], (T - 1, b))
      scale = 1.0
    else:  # K independent uniform draws of t per example
      ts = jax.random.randint(jax.random.fold_in(k_diff, 1), (num_t_samples, b), 2, T + 1)
      scale = (T - 1) / num_t_samples

    def body(total, inputs):
      t, k = inputs
      x_t, eps = noisy_sample_and_target("eps", schedule, x0, t, k)
      return total + _flat_sum(diffusion_kl(schedule, t, eps, *model(x_t, t))), None

    diffusion, _ = jax.lax.scan(body, jnp.zeros(b), (ts, jax.random.split(k_diff, ts.shape[0])))
    diffusion = diffusion * scale

  t1 = jnp.ones((b,), jnp.int32)
  x1, _ = noisy_sample_and_target("eps", schedule, x0, t1, k_rec)
  reconstruction = _flat_sum(decoder_nll(schedule, x1, *model(x1, t1), levels, num_levels))

  to_bits = 1.0 / (np.prod(x0.shape[1:]) * np.log(2.0))
  terms = {"prior": prior * to_bits, "diffusion": diffusion * to_bits,
           "reconstruction": reconstruction * to_bits}
  terms["total"] = terms["prior"] + terms["diffusion"] + terms["reconstruction"]
  return terms

def vlb_terms(model_fn: EpsFn, params: Any, schedule: Schedule, levels, y, key,
              num_levels: int, num_t_samples: int | None = None) -> dict[str, jax.Array]:
  """The bound's terms per example, in bits per dimension, for integer images `levels` [B, ...].

  model_fn(params, x, t / T [B], y) is the samplers' interface: eps_hat (e.g.
  `GaussianDiffusion.eps_fn`, or a closed form: the fixed variances) or (eps_hat, f) (e.g.
  `LearnedVarianceDiffusion.eps_frac_fn`, a `FixedFraction`: the learned ones). It must be
  hashable (it is a static argument of the compiled function). Returns {"prior", "diffusion",
  "reconstruction", "total"}, each [B]. num_t_samples=None sums the diffusion KL over all
  t = 2..T; an integer K estimates that sum without bias from K uniformly drawn timesteps per
  example.
  """
  if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
    raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
  if num_t_samples is not None and (
      not isinstance(num_t_samples, (int, np.integer)) or num_t_samples < 1):
    raise ValueError(f"num_t_samples must be None or a positive integer, got {num_t_samples!r}")
  levels = jnp.asarray(levels)
  if levels.ndim < 2 or not jnp.issubdtype(levels.dtype, jnp.integer):
    raise ValueError(f"levels must be integer images [B, ...], got {levels.dtype} {levels.shape}")
  lo, hi = int(levels.min()), int(levels.max())
  if lo < 0 or hi >= num_levels:
    raise ValueError(f"levels must lie in 0..{num_levels - 1}, got values in {lo}..{hi}")
  return _vlb_terms(model_fn, params, schedule, levels, jnp.asarray(y), key,
                    num_levels=int(num_levels), num_t_samples=num_t_samples)


def bpd(process, params, images_levels, labels, num_levels: int, key,
        num_t_samples: int | None = None, batch_size: int = 256, *,
        model_fn: EpsFn | None = None) -> dict[str, float]:
  """Mean bound terms (bits per dimension) of a `GaussianDiffusion` over a dataset, with its
  `bound_model_fn` (eps: the fixed variances; (eps, f) for `LearnedVarianceDiffusion`) or the
  given `model_fn` (see `vlb_terms`). Every batch i uses the key fold_in(key, i), so bounds of two models with the same key use the same noise (paired).

  labels=None scores every image under the null label (the unconditional model); otherwise
  the bound is on -log2 p(x | label). The last batch is padded to `batch_size` (the padding is
  dropped), so one compiled program serves the whole set.
  """
  images_levels = np.asarray(images_levels)
  n = len(images_levels)
  if n == 0:
    raise ValueError("images_levels is empty")
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if labels is None:
    labels = np.full((n,), process.null_label, np.int32)
  labels = np.asarray(labels, np.int32)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
  batch_size = min(batch_size, n)
  sums = {k: 0.0 for k in (*TERMS, "total")}
  for i, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, start + batch_size) % n  # the last batch wraps around; dropped below
    real = min(batch_size, n - start)
    terms = vlb_terms(model_fn or process.bound_model_fn, params, process.schedule,
                      images_levels[idx], labels[idx], jax.random.fold_in(key, i), num_levels,
                      num_t_samples)
    for k, v in terms.items():
      sums[k] += float(jnp.sum(v[:real]))
  return {k: v / n for k, v in sums.items()}
