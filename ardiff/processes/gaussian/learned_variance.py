"""Gaussian diffusion with learned reverse variances (Nichol & Dhariwal, 2021, "improved DDPM").

The network outputs 2C channels for C data channels: the noise prediction eps_hat (the usual
`eps` target) and v. The reverse transition is p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), Sigma_t)
with, per pixel,

    f = (v + 1) / 2,    log Sigma_t = f log beta_t + (1 - f) log beta~_t,
    beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t.

v is unconstrained, as in the paper: f outside [0, 1] extrapolates past the two endpoints
(the paper reports that it stays inside in practice; nothing here clips it).

Training (the paper's hybrid objective, with its uniform timesteps t ~ U{1..T}):

    L = L_simple + lambda L_vlb,   lambda = 0.001,
    L_simple = mean over pixels of (eps - eps_hat)^2 (the plain DDPM loss),
    L_vlb = T L_t  (one-sample estimate of sum_t L_t, bits per dimension),
    L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))  for t >= 2,
    L_1 = -log p(x0 | x1)  (the discretised Gaussian decoder of `likelihood.py`),

with eps_hat's gradient stopped inside L_vlb, so L_vlb trains only the variance and the mean
keeps the L_simple objective. The paper's importance-sampled L_vlb-only variant is not here.
For t >= 2 both Gaussians are diagonal; with d = log Sigma_t - log beta~_t = f log(beta_t /
beta~_t) the KL per pixel is, in eps space (as in `likelihood.py`, where d = 0),

    KL_t = 1/2 [ expm1(-d) + d + exp(-d) beta_t / (alpha_t (1 - ab_{t-1})) (eps - eps_hat)^2 ],

log(beta_t / beta~_t) = log(1 - ab_t) - log(1 - ab_{t-1}) from the betas (no float32 1 - ab
near ab = 1). The decoder's variance at t = 1, where beta~_1 = 0, interpolates between
beta~_2 and beta_1 (the paper's code clips log beta~_1 to log beta~_2): log Sigma_1 =
f log beta_1 + (1 - f) log beta~_2. So f = 1 everywhere is fixed beta (and `likelihood.py`'s
decoder, sigma_1^2 = beta_1), while the fixed-beta~ bound of `likelihood.py` is f = 0 for
t >= 2 with f = 1 at t = 1.

Sampling: every registered solver uses the eps half (`eps_fn`, inherited); the registered
solver `ddpm_learned:N` is handed (eps, f) (`model_fn`) and runs DDPM with the learned
variance on the respaced N-step grid (`samplers/ddpm_learned.py`). Images only (the decoder
needs grey levels); target `eps` only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.data.levels import levels_to_unit, unit_to_levels
from ardiff.processes.gaussian.likelihood import (TERMS, _flat_sum, _minus_x_minus_log1m,
                                                  _one_minus_alpha_bars,
                                                  discretized_gaussian_log_probs)
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.processes.gaussian.samplers import ddpm_learned
from ardiff.processes.gaussian.schedules import Schedule
from ardiff.processes.gaussian.targets import eps_to_x0, noisy_sample_and_target
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import SampleSpec

LEARNED_SAMPLER = "ddpm_learned"
VLB_WEIGHT = 0.001  # lambda of the hybrid objective (Nichol & Dhariwal, section 3.1)


def _bcast(a: jax.Array, x: jax.Array) -> jax.Array:
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def fraction(v: jax.Array) -> jax.Array:
  """The network's variance output v -> the interpolation fraction f = (v + 1) / 2 (unclipped)."""
  return (v + 1.0) / 2.0


def log_beta_ratios(schedule: Schedule) -> jax.Array:
  """log(beta_t / beta~_t) = log(1 - ab_t) - log(1 - ab_{t-1}) for t = 0..T (entries 0 and 1
  are meaningless: beta~_1 = 0; they are set to 0)."""
  log_1m = jnp.log(jnp.maximum(_one_minus_alpha_bars(schedule), 1e-30))
  ratio = log_1m[1:] - log_1m[:-1]
  return jnp.concatenate([jnp.zeros(1, ratio.dtype), ratio]).at[1].set(0.0)


def diffusion_kl(schedule: Schedule, t: jax.Array, eps: jax.Array, eps_hat: jax.Array,
                 frac: jax.Array) -> jax.Array:
  """KL(q(x_{t-1} | x_t, x0) || N(mu(x_t, x0_hat), Sigma_t)) per pixel, in nats, for integer
  t >= 2 [B]; eps is the noise that made x_t (module doc for the formula)."""
  beta = _bcast(schedule.betas[t], eps)
  weight = beta / ((1.0 - beta) * _bcast(_one_minus_alpha_bars(schedule)[t - 1], eps))
  d = frac * _bcast(log_beta_ratios(schedule)[t], eps)
  return 0.5 * (jnp.expm1(-d) + d + jnp.exp(-d) * weight * (eps - eps_hat) ** 2)


def decoder_log_variance(schedule: Schedule, frac: jax.Array) -> jax.Array:
  """log Sigma_1 = f log beta_1 + (1 - f) log beta~_2 (beta~_1 = 0 clipped to beta~_2)."""
  om = _one_minus_alpha_bars(schedule)
  log_beta1 = jnp.log(schedule.betas[1])
  log_beta_tilde2 = jnp.log(om[1]) - jnp.log(om[2]) + jnp.log(schedule.betas[2])
  return frac * log_beta1 + (1.0 - frac) * log_beta_tilde2


def decoder_nll(schedule: Schedule, x1, eps_hat, frac, levels, num_levels: int) -> jax.Array:
  """-log p(x0 = levels | x1) per pixel, in nats: the discretised Gaussian of `likelihood.py`
  with mean x0_hat(x1) and variance Sigma_1."""
  t1 = jnp.ones((x1.shape[0],), jnp.int32)
  mean = eps_to_x0(schedule, eps_hat, x1, t1)
  std = jnp.exp(0.5 * decoder_log_variance(schedule, frac))
  logp = discretized_gaussian_log_probs(mean, std, num_levels)
  return -jnp.take_along_axis(logp, levels.astype(jnp.int32)[..., None], -1)[..., 0]


def split_output(out: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 2C] network output -> (eps_hat [..., C], f [..., C])."""
  eps_hat, v = jnp.split(out, 2, axis=-1)
  return eps_hat, fraction(v)


def hybrid_loss(schedule: Schedule, out, x0, x_t, eps, t, num_levels: int,
                vlb_weight: float = VLB_WEIGHT) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_simple + vlb_weight * T * L_t (module doc) for a batch: out [B, ..., 2C] the network's
  output at (x_t, t), eps the noise that made x_t from x0 (floats at the level centres),
  t int [B] in 1..T. eps_hat's gradient is stopped inside the L_vlb part."""
  T = schedule.num_timesteps
  eps_hat, frac = split_output(out)
  simple = jnp.mean((eps - eps_hat) ** 2)
  frozen = jax.lax.stop_gradient(eps_hat)
  n = np.prod(x0.shape[1:])
  kl = _flat_sum(diffusion_kl(schedule, jnp.maximum(t, 2), eps, frozen, frac)) / n
  first = t == 1  # the decoder term; elsewhere fed x0 itself so that nothing overflows
  x1 = jnp.where(_bcast(first, x_t), x_t, x0)
  rec = _flat_sum(decoder_nll(schedule, x1, jnp.where(_bcast(first, x_t), frozen, 0.0), frac,
                              unit_to_levels(x0, num_levels), num_levels)) / n
  vlb_t = jnp.where(first, rec, kl) / np.log(2.0)  # bits per dimension
  vlb = T * jnp.mean(vlb_t)
  loss = simple + vlb_weight * vlb
  return loss, {"loss": loss, "l_simple": simple, "l_vlb": vlb}


@functools.partial(jax.jit, static_argnames=("eps_frac_fn", "num_levels", "num_t_samples"))
def _vlb_terms(eps_frac_fn, params, schedule, levels, y, key, *, num_levels, num_t_samples):
  # The same keys, timesteps and noise as likelihood._vlb_terms: same-key bounds are paired.
  T = schedule.num_timesteps
  x0 = levels_to_unit(levels, num_levels)
  b = x0.shape[0]
  k_diff, k_rec = jax.random.split(key)
  ab_T = schedule.alpha_bars[T]
  prior = 0.5 * _flat_sum(ab_T * x0**2 + _minus_x_minus_log1m(ab_T))

  if num_t_samples is None:
    ts = jnp.broadcast_to(jnp.arange(2, T + 1)[:, None], (T - 1, b))
    scale = 1.0
  else:
    ts = jax.random.randint(jax.random.fold_in(k_diff, 1), (num_t_samples, b), 2, T + 1)
    scale = (T - 1) / num_t_samples

  def body(total, inputs):
    t, k = inputs
    x_t, eps = noisy_sample_and_target("eps", schedule, x0, t, k)
    eps_hat, frac = eps_frac_fn(params, x_t, t / T, y)
    frac = jnp.broadcast_to(frac, x_t.shape)
    return total + _flat_sum(diffusion_kl(schedule, t, eps, eps_hat, frac)), None

  diffusion, _ = jax.lax.scan(body, jnp.zeros(b), (ts, jax.random.split(k_diff, ts.shape[0])))
  diffusion = diffusion * scale

  t1 = jnp.ones((b,), jnp.int32)
  x1, _ = noisy_sample_and_target("eps", schedule, x0, t1, k_rec)
  eps_hat, frac = eps_frac_fn(params, x1, t1 / T, y)
  reconstruction = _flat_sum(decoder_nll(schedule, x1, eps_hat,
                                         jnp.broadcast_to(frac, x1.shape), levels, num_levels))
  to_bits = 1.0 / (np.prod(x0.shape[1:]) * np.log(2.0))
  terms = {"prior": prior * to_bits, "diffusion": diffusion * to_bits,
           "reconstruction": reconstruction * to_bits}
  terms["total"] = terms["prior"] + terms["diffusion"] + terms["reconstruction"]
  return terms


def vlb_terms(eps_frac_fn, params: Any, schedule: Schedule, levels, y, key, num_levels: int,
              num_t_samples: int | None = None) -> dict[str, jax.Array]:
  """The bound's terms per example (bits per dimension) with the learned variances:
  {"prior", "diffusion", "reconstruction", "total"}, each [B]. eps_frac_fn(params, x, t / T,
  y) -> (eps_hat, f) (hashable: e.g. `LearnedVarianceDiffusion.eps_frac_fn`, or a
  `FixedFraction`). Same arguments, checks and noise as `likelihood.vlb_terms`."""
  if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
    raise ValueError(f"num_levels must be an integer >= 2, got {num_levels!r}")
  if num_t_samples is not None and (
      not isinstance(num_t_samples, (int, np.integer)) or num_t_samples < 1):
    raise ValueError(f"num_t_samples must be None or a positive integer, got {num_t_samples!r}")
  levels = jnp.asarray(levels)
  if levels.ndim < 2 or not jnp.issubdtype(levels.dtype, jnp.integer):
    raise ValueError(f"levels must be integer images [B, ...], got {levels.dtype} {levels.shape}")
  if int(levels.min()) < 0 or int(levels.max()) >= num_levels:
    raise ValueError(f"levels must lie in 0..{num_levels - 1}")
  if schedule.num_timesteps < 2:
    raise ValueError("the learned-variance bound needs num_timesteps >= 2")
  return _vlb_terms(eps_frac_fn, params, schedule, levels, jnp.asarray(y), key,
                    num_levels=int(num_levels), num_t_samples=num_t_samples)


def bpd(eps_frac_fn, params, schedule: Schedule, images_levels, labels, num_levels: int, key,
        *, null_label: int, num_t_samples: int | None = None,
        batch_size: int = 256) -> dict[str, float]:
  """Mean bound terms (bits per dimension) over a dataset, batched as `likelihood.bpd` (same
  keys per batch, so bounds of two models with the same key use the same noise).
  labels=None scores every image under `null_label` (the unconditional model)."""
  images_levels = np.asarray(images_levels)
  n = len(images_levels)
  if n == 0:
    raise ValueError("images_levels is empty")
  if labels is None:
    labels = np.full((n,), null_label, np.int32)
  labels = np.asarray(labels, np.int32)
  if labels.shape != (n,):
    raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
  batch_size = min(batch_size, n)
  sums = {k: 0.0 for k in (*TERMS, "total")}
  for i, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, start + batch_size) % n
    real = min(batch_size, n - start)
    terms = vlb_terms(eps_frac_fn, params, schedule, images_levels[idx], labels[idx],
                      jax.random.fold_in(key, i), num_levels, num_t_samples)
    for k, v in terms.items():
      sums[k] += float(jnp.sum(v[:real]))
  return {k: v / n for k, v in sums.items()}


@dataclasses.dataclass(frozen=True)
class LearnedVarianceDiffusion(GaussianDiffusion):
  """`GaussianDiffusion` whose network (UNet with out_channels = 2C) also predicts the
  variance; trained with the hybrid objective. `predict` / `eps_fn` return the eps half, so
  every registered solver, guidance, inpainting and `likelihood.bpd` work unchanged (with the
  fixed beta~ variance); `ddpm_learned:N` samples with the learned one, `bpd` bounds it."""

  vlb_weight: float = VLB_WEIGHT

  def __post_init__(self):
    super().__post_init__()
    if self.target != "eps":
      raise ValueError(f"learned variances are trained with the eps target (config key "
                       f"'diffusion.target'), got {self.target!r}")
    if self.num_levels is None:
      raise ValueError("learned variances need image data with grey levels (the decoder term "
                       "is a discretised Gaussian); config key 'dataset'")
    if not self.vlb_weight >= 0:
      raise ValueError(f"vlb_weight must be >= 0, got {self.vlb_weight}")
    channels = self.data_shape[-1] if self.data_shape else None
    out = getattr(self.model, "out_channels", None)
    if channels is not None and out != 2 * channels:
      raise ValueError(f"the network must output 2 x {channels} channels (eps and v), got "
                       f"out_channels={out!r}")

  def predict_full(self, params, x_t, u, y, train=False, rngs=None):
    """The network's whole output [..., 2C] at real times u [B]."""
    return self.model.apply(params, x_t, u.astype(jnp.float32), y, train=train, rngs=rngs)

  def predict(self, params, x_t, u, y, train=False, rngs=None):
    """The eps half [..., C] (what `GaussianDiffusion.eps_fn` and the solvers read)."""
    return split_output(self.predict_full(params, x_t, u, y, train, rngs))[0]

  def eps_frac_fn(self, params, x, u, y):
    """(eps_hat, f) at real times u [B] from one network call; eps_hat as `eps_fn` gives it
    (clip_x0 applied to the implied x0)."""
    eps, frac = split_output(self.predict_full(params, x, u, y))
    if self.clip_x0 is not None:
      ab = _bcast(self.schedule.alpha_bar_at(u), x).astype(x.dtype)
      x0 = jnp.clip((x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -self.clip_x0, self.clip_x0)
      eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
    return eps, frac

  def loss(self, params, batch, key, train=True):
    """The hybrid objective (module doc); logs loss, l_simple and l_vlb (bits, T L_t)."""
    x0, y = self.to_model(batch["x"]), batch["y"]
    k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 4)
    t = jax.random.randint(k_t, (x0.shape[0],), 1, self.num_timesteps + 1)
    if train and self.p_uncond > 0:
      y = jnp.where(jax.random.bernoulli(k_drop, self.p_uncond, y.shape), self.null_label, y)
    x_t, eps = noisy_sample_and_target("eps", self.schedule, x0, t, k_noise)
    out = self.predict_full(params, x_t, t / self.num_timesteps, y, train=train,
                            rngs={"dropout": k_dropout})
    return hybrid_loss(self.schedule, out, x0, x_t, eps, t, self.num_levels, self.vlb_weight)

  def bpd(self, params, images_levels, labels, key, num_t_samples=None, batch_size=256):
    """The learned-variance bound in bits per dimension (see `bpd`)."""
    return bpd(self.eps_frac_fn, params, self.schedule, images_levels, labels,
               self.num_levels, key, null_label=self.null_label, num_t_samples=num_t_samples,
               batch_size=batch_size)

  # ---------------------------------------------------------------- sampling

  def model_fn(self, spec: SampleSpec, guidance: Guidance | None = None):
    """`ddpm_learned` reads the learned fraction: (eps, f) from `eps_frac_fn`; every other
    solver gets the eps half (`GaussianDiffusion.model_fn`)."""
    if spec.name != LEARNED_SAMPLER:
      return super().model_fn(spec, guidance)
    return self.eps_frac_fn if guidance is None else ddpm_learned.guided(self.eps_frac_fn)
