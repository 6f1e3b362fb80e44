"""Learned reverse variances (improved DDPM) against independent float64 references.

References are written from the textbook forms, not from the library's eps-space ones: the
Gaussian KL of the posterior and model transitions in x-space, scipy's normal CDF for the
discretised decoder, Monte Carlo for the KL, the respaced chain's betas from alpha_bar, and the
exact reverse law of 1-D Gaussian data. The schedules are the library's (tested elsewhere),
read in float64.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from ardiff.build import build
from ardiff.configs import ConfigError
from ardiff.data.base import Dataset
from ardiff.presets import diffusion_section, unet_section
from ardiff.processes.gaussian import learned_variance as lv
from ardiff.processes.gaussian import likelihood
from ardiff.processes.gaussian.samplers import SAMPLERS, ModelContext, ddpm, ddpm_learned
from ardiff.processes.gaussian.samplers import nfe as samplers_nfe
from ardiff.processes.gaussian.samplers import sample as solver_sample
from ardiff.processes.gaussian.samplers import steps_for_nfe
from ardiff.processes.gaussian.samplers.spacing import start_time
from ardiff.processes.gaussian.schedules import make_schedule
from ardiff.processes.guidance import Guidance, guidance_cond

L = 17
HALF = 1 / (L - 1)


def _f64(schedule):
  return np.asarray(schedule.alpha_bars, np.float64), np.asarray(schedule.betas, np.float64)


def _gaussian_kl(m1, v1, m2, v2):
  return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def _reference_kl(ab, betas, t, x0, eps, eps_hat, frac):
  """KL(q(x_{t-1} | x_t, x0) || N(mu(x_t, x0_hat), Sigma)) in x-space, float64."""
  x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
  x0_hat = (x_t - np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(ab[t])
  c0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
  ct = np.sqrt(1 - betas[t]) * (1 - ab[t - 1]) / (1 - ab[t])
  beta_tilde = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
  sigma = np.exp(frac * np.log(betas[t]) + (1 - frac) * np.log(beta_tilde))
  return _gaussian_kl(c0 * x0 + ct * x_t, beta_tilde, c0 * x0_hat + ct * x_t, sigma)


def _reference_decoder_nll(ab, betas, levels, x1, eps_hat, frac):
  """-log P(level) under the discretised N(x0_hat(x1), Sigma_1), scipy CDFs, float64."""
  x0_hat = (x1 - np.sqrt(1 - ab[1]) * eps_hat) / np.sqrt(ab[1])
  beta_tilde2 = (1 - ab[1]) / (1 - ab[2]) * betas[2]
  std = np.sqrt(np.exp(frac * np.log(betas[1]) + (1 - frac) * np.log(beta_tilde2)))
  c = levels / (L - 1) * 2 - 1
  lo = np.where(levels == 0, -np.inf, c - HALF)
  hi = np.where(levels == L - 1, np.inf, c + HALF)
  mass = np.where(lo > x0_hat, norm.sf(lo, x0_hat, std) - norm.sf(hi, x0_hat, std),
                  norm.cdf(hi, x0_hat, std) - norm.cdf(lo, x0_hat, std))
  return -np.log(mass)


# ------------------------------------------------------------------------ the KL per timestep


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_kl_matches_the_float64_gaussian_kl_in_x_space(name):
  T = 50
  schedule = make_schedule(name, T)
  ab, betas = _f64(schedule)
  rng = np.random.default_rng(0)
  t = np.array([2, 3, 10, 25, 49, 50])
  x0 = rng.uniform(-1, 1, (6, 5))
  eps, eps_hat = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
  frac = rng.uniform(-0.3, 1.3, (6, 5))  # v is unconstrained: f may leave [0, 1]
  got = likelihood.diffusion_kl(schedule, jnp.asarray(t), *(jnp.asarray(a, jnp.float32)
                                                             for a in (eps, eps_hat, frac)))
  ref = _reference_kl(ab, betas, t[:, None], x0, eps, eps_hat, frac)
  np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=2e-4, atol=1e-6)
  # Equal means: the KL is the variance mismatch alone, 0 exactly when f = 0 (Sigma = beta~).
  same = likelihood.diffusion_kl(schedule, jnp.asarray(t), jnp.asarray(eps, jnp.float32),
                                 jnp.asarray(eps, jnp.float32), jnp.zeros((6, 5)))
  assert float(jnp.max(jnp.abs(same))) == 0.0


def test_kl_matches_monte_carlo():
  """E_q[log q(x_{t-1}) - log p(x_{t-1})] by 400k draws from the posterior q."""
  schedule = make_schedule("cosine", 20)
  ab, betas = _f64(schedule)
  t, x0, eps, eps_hat, frac = 3, 0.4, 0.7, -0.2, 0.65
  x_t = np.sqrt(ab[t]) * x0 + np.sqrt(1 - ab[t]) * eps
  x0_hat = (x_t - np.sqrt(1 - ab[t]) * eps_hat) / np.sqrt(ab[t])
  c0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
  ct = np.sqrt(1 - betas[t]) * (1 - ab[t - 1]) / (1 - ab[t])
  var_q = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
  var_p = betas[t] ** frac * var_q ** (1 - frac)
  draws = np.random.default_rng(1).normal(c0 * x0 + ct * x_t, np.sqrt(var_q), 400_000)
  log_ratio = (norm.logpdf(draws, c0 * x0 + ct * x_t, np.sqrt(var_q))
               - norm.logpdf(draws, c0 * x0_hat + ct * x_t, np.sqrt(var_p)))
  got = float(likelihood.diffusion_kl(schedule, jnp.array([t]), jnp.array([eps]),
                                      jnp.array([eps_hat]), jnp.array([frac]))[0])
  assert abs(got - log_ratio.mean()) < 5 * log_ratio.std() / np.sqrt(len(draws))


# ------------------------------------------------------------------------ the bound


@dataclasses.dataclass(frozen=True)
class Wiggly:
  """An arbitrary eps model and a fraction that depends on x and t (hashable)."""

  def eps(self, x, t):
    return 0.8 * x + 0.3 * jnp.sin(5 * x) + 0.2 * t.reshape((-1,) + (1,) * (x.ndim - 1))

  def frac(self, x, t):
    return 0.4 + 0.5 * jnp.cos(3 * x) - 0.3 * t.reshape((-1,) + (1,) * (x.ndim - 1))

  def __call__(self, params, x, t, y):
    return self.eps(x, t), self.frac(x, t)


@dataclasses.dataclass(frozen=True)
class Constant:
  """Wiggly's eps with a constant fraction."""

  frac: float

  def __call__(self, params, x, t, y):
    return Wiggly().eps(x, t), jnp.full(x.shape, self.frac)


def _reference_bound(model, schedule, levels, key):
  """Float64 bound terms (bits/dim) with every t = 2..T, on the library's own noise draws
  (the keys are split as `likelihood.vlb_terms` documents by its code)."""
  from ardiff.processes.gaussian.targets import noisy_sample_and_target

  ab, betas = _f64(schedule)
  T = schedule.num_timesteps
  x0 = levels / (L - 1) * 2 - 1
  x0_32 = jnp.asarray(x0, jnp.float32)
  k_diff, k_rec = jax.random.split(key)
  keys = jax.random.split(k_diff, T - 1)
  b, d = len(x0), x0[0].size
  flat = lambda a: a.reshape(b, -1).sum(1)  # noqa: E731
  prior = flat(_gaussian_kl(np.sqrt(ab[T]) * x0, 1 - ab[T], 0.0, 1.0))
  diffusion = np.zeros(b)
  for t in range(2, T + 1):
    tt = jnp.full((b,), t)
    x_t, eps = noisy_sample_and_target("eps", schedule, x0_32, tt, keys[t - 2])
    eps_hat, frac = (np.asarray(a, np.float64) for a in model(None, x_t, tt / T, None))
    eps = np.asarray(eps, np.float64)
    # x_t rebuilt in float64 from eps: the reference sees the same draw, not float32 x_t.
    diffusion += flat(_reference_kl(ab, betas, t, x0, eps, eps_hat, frac))
  x1, _ = noisy_sample_and_target("eps", schedule, x0_32, jnp.ones((b,), jnp.int32), k_rec)
  eps_hat, frac = (np.asarray(a, np.float64) for a in model(None, x1, jnp.full((b,), 1 / T), None))
  rec = flat(_reference_decoder_nll(ab, betas, levels, np.asarray(x1, np.float64), eps_hat, frac))
  to_bits = 1 / (d * np.log(2))
  return {"prior": prior * to_bits, "diffusion": diffusion * to_bits,
          "reconstruction": rec * to_bits}


LEVELS = np.array([[[[0], [5]], [[16], [9]]], [[[8], [8]], [[3], [12]]]])  # two 2x2 images


@pytest.mark.parametrize("model", [Constant(1.0), Constant(0.0), Wiggly()],
                         ids=["sigma=beta", "sigma=beta_tilde", "f(x,t)"])
def test_bound_terms_match_the_float64_reference(model):
  """f = 1 is the fixed variance beta at every t (decoder beta_1); f = 0 is beta~ (decoder
  beta~_2, the paper's clip); f(x, t) is a per-pixel learned-like fraction."""
  schedule = make_schedule("cosine", 6)
  key = jax.random.key(3)
  terms = likelihood.vlb_terms(model, None, schedule, jnp.asarray(LEVELS),
                               jnp.zeros(2, jnp.int32), key, L)
  ref = _reference_bound(model, schedule, LEVELS, key)
  for k in ref:
    np.testing.assert_allclose(np.asarray(terms[k], np.float64), ref[k], rtol=3e-4, atol=1e-6,
                               err_msg=k)
  np.testing.assert_allclose(np.asarray(terms["total"]),
                             sum(np.asarray(terms[k]) for k in ref), rtol=1e-6)


@dataclasses.dataclass(frozen=True)
class BetaTildeThenBeta1:
  """A network's eps with f = 0 for t >= 2 (Sigma = beta~) and f = 1 at t = 1 (decoder
  sigma^2 = beta_1): exactly the fixed-variance model of `likelihood.py`."""

  process: lv.LearnedVarianceDiffusion

  def __call__(self, params, x, t, y):
    eps, _ = self.process.eps_frac_fn(params, x, t, y)
    first = (t * self.process.num_timesteps < 1.5).reshape((-1,) + (1,) * (x.ndim - 1))
    return eps, jnp.where(first, 1.0, 0.0) * jnp.ones_like(x)


class TinyNet(nn.Module):
  """A cheap stand-in for the UNet (fast to compile): per-pixel MLP of (x, t, label)."""

  out_channels: int = 2

  @nn.compact
  def __call__(self, x, t, y, train=False):
    feats = [x, jnp.broadcast_to(t[:, None, None, None], x.shape),
             jnp.broadcast_to(y[:, None, None, None].astype(x.dtype), x.shape)]
    h = jnp.tanh(nn.Dense(16)(jnp.concatenate(feats, -1)))
    return nn.Dense(self.out_channels)(h)


def _cheap_process(T=12):
  """The process with TinyNet and random parameters."""
  process = lv.LearnedVarianceDiffusion(TinyNet(), 3, "cosine", T, data_shape=(2, 2, 1),
                                        num_levels=L, clip_x0=1.0)
  x = jnp.asarray(LEVELS / (L - 1) * 2 - 1, jnp.float32)
  return process, process.init_params(jax.random.key(0), {"x": x, "y": jnp.zeros(2, jnp.int32)})


def _tiny_process(T=12, **diffusion):
  data = Dataset("tiny", "image", LEVELS.astype(np.uint8), np.zeros(2, np.int32),
                 LEVELS.astype(np.uint8), np.zeros(2, np.int32), 3, L)
  section = unet_section(base_channels=8, channel_mult=(1,), num_res_blocks=1, num_heads=2,
                         dropout=0.0)
  process = build("gaussian_learned_var", section, data,
                  diffusion=diffusion_section(num_timesteps=T, **diffusion))
  x = jnp.asarray(LEVELS / (L - 1) * 2 - 1, jnp.float32)

  @jax.jit
  def init(key):
    params = process.init_params(key, {"x": x, "y": jnp.zeros(2, jnp.int32)})
    # The output conv starts at zero; give it random weights so that eps and v are not 0.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [p + 0.3 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)

  return process, init(jax.random.key(0))


def test_beta_tilde_bound_equals_the_fixed_variance_bound_of_likelihood_py():
  """Same eps network, same key: f = 0 (t >= 2) / 1 (t = 1) reproduces `likelihood.py` term
  by term; swapping beta and beta~ in either module breaks this."""
  process, params = _cheap_process()
  y = jnp.array([0, 3], jnp.int32)
  fixed = likelihood.vlb_terms(process.eps_fn, params, process.schedule, jnp.asarray(LEVELS),
                               y, jax.random.key(5), L, 3)
  mine = likelihood.vlb_terms(BetaTildeThenBeta1(process), params, process.schedule,
                              jnp.asarray(LEVELS), y, jax.random.key(5), L, 3)
  for k in fixed:
    np.testing.assert_allclose(np.asarray(mine[k]), np.asarray(fixed[k]), rtol=2e-6,
                               atol=1e-9, err_msg=k)
  # The network's own f is something else: the learned bound differs.
  learned = likelihood.bpd(process, params, LEVELS, np.asarray(y), L, jax.random.key(5),
                           num_t_samples=3)
  assert abs(learned["total"] - float(jnp.mean(fixed["total"]))) > 1e-3
  assert np.isfinite(learned["total"])


# ------------------------------------------------------------------------ the hybrid loss


def test_hybrid_loss_value_and_stop_gradient():
  """L_vlb's gradient reaches only the v channels; L_simple's only the eps channels; the
  L_vlb value is T times the float64 per-t term (KL or decoder NLL) in bits per dim."""
  T = 10
  schedule = make_schedule("cosine", T)
  ab, betas = _f64(schedule)
  rng = np.random.default_rng(2)
  levels = rng.integers(0, L, (4, 2, 2, 1))
  x0 = levels / (L - 1) * 2 - 1
  eps = rng.normal(size=x0.shape)
  t = np.array([1, 2, 5, 10])
  x_t = np.sqrt(ab[t])[:, None, None, None] * x0 + np.sqrt(1 - ab[t])[:, None, None, None] * eps
  out = rng.normal(size=(4, 2, 2, 2))
  args = [jnp.asarray(a, jnp.float32) for a in (x0, x_t, eps)] + [jnp.asarray(t)]

  @jax.jit
  def terms(o):
    return lv.hybrid_loss(schedule, o, *args, L, vlb_weight=0.001)[1]

  o32 = jnp.asarray(out, jnp.float32)
  g_vlb, g_simple, g_loss = (np.asarray(g) for g in jax.jit(lambda o: [
      jax.grad(lambda o: terms(o)[k])(o) for k in ("l_vlb", "l_simple", "loss")])(o32))
  assert np.all(g_vlb[..., 0] == 0) and np.all(np.abs(g_vlb[..., 1]) > 0)
  assert np.all(g_simple[..., 1] == 0) and np.all(np.abs(g_simple[..., 0]) > 0)
  np.testing.assert_allclose(g_loss, g_simple + 0.001 * g_vlb, rtol=1e-5, atol=1e-9)

  eps_hat, frac = out[..., :1], (out[..., 1:] + 1) / 2
  per = [_reference_decoder_nll(ab, betas, levels[0], x_t[0], eps_hat[0], frac[0]).mean()]
  per += [_reference_kl(ab, betas, t[i], x0[i], eps[i], eps_hat[i], frac[i]).mean()
          for i in range(1, 4)]
  got = terms(o32)
  np.testing.assert_allclose(float(got["l_vlb"]), T * np.mean(per) / np.log(2), rtol=2e-4)
  np.testing.assert_allclose(float(got["l_simple"]), np.mean((eps - eps_hat) ** 2), rtol=1e-5)


def test_process_loss_has_finite_gradients_at_every_timestep():
  process, params = _cheap_process(T=4)
  x = jnp.asarray(np.tile(LEVELS, (8, 1, 1, 1)) / (L - 1) * 2 - 1, jnp.float32)  # 16: all t
  batch = {"x": x, "y": jnp.zeros(16, jnp.int32)}
  (loss, metrics), grads = jax.value_and_grad(process.loss, has_aux=True)(
      params, batch, jax.random.key(0))
  assert np.isfinite(float(loss)) and float(metrics["l_vlb"]) > 0
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


# ------------------------------------------------------------------------ the sampler


def _learned_step(monkeypatch, schedule, x, eps, frac, t, s, z):
  """The registered `ddpm_learned` step t -> s (s > 0) for a model returning (eps, frac), with
  its noise draw forced to z."""
  monkeypatch.setattr(ddpm, "per_example_normal", lambda key, like: z)
  ctx = ModelContext(lambda params, x, t, y: (eps, frac), None, None, schedule, x.shape[0],
                     final=False, num_steps=jnp.int32(10))
  return SAMPLERS.get("ddpm_learned").step(ctx, (), x, t, s, None, {})[0]


def test_respaced_variances_against_a_hand_computation(monkeypatch):
  """One step t -> s of the respaced chain: the noise the step adds (output at z = 1 minus
  output at z = 0) has variance exp(f log beta' + (1 - f) log beta~'), beta' = 1 - ab_t / ab_s,
  beta~' = (1 - ab_s) / (1 - ab_t) beta'; the mean is the posterior's with x0_hat."""
  schedule = make_schedule("cosine", 1000)
  ab, _ = _f64(schedule)
  # 10 strided steps from t = 950 (sigma 12.7; at t = T, sigma = 2e4 and float32 x0_hat
  # carries 3e-4 relative rounding into the step: samplers start at sigma_max = 80).
  grid = np.round(np.linspace(950, 0, 11)).astype(int)
  x = jnp.array([[0.3], [-1.1]], jnp.float32)
  eps = jnp.array([[0.5], [-0.2]], jnp.float32)
  for t, s in zip(grid[:-2], grid[1:-1]):
    beta = 1 - ab[t] / ab[s]
    beta_tilde = (1 - ab[s]) / (1 - ab[t]) * beta
    bp, bt = ddpm_learned.respaced_variances(ab[t], ab[s])
    np.testing.assert_allclose([bp, bt], [beta, beta_tilde], rtol=1e-12)
    x0_hat = (np.asarray(x, np.float64) - np.sqrt(1 - ab[t]) * np.asarray(eps)) / np.sqrt(ab[t])
    mean = (np.sqrt(ab[s]) * beta / (1 - ab[t]) * x0_hat
            + np.sqrt(1 - beta) * (1 - ab[s]) / (1 - ab[t]) * np.asarray(x, np.float64))
    for f in (0.0, 1.0, 0.3, 1.2):
      frac = jnp.full(x.shape, f)
      at0, at1 = (_learned_step(monkeypatch, schedule, x, eps, frac, t / 1000, s / 1000, z)
                  for z in (jnp.zeros_like(x), jnp.ones_like(x)))
      var = np.asarray(at1 - at0, np.float64) ** 2
      want = np.exp(f * np.log(beta) + (1 - f) * np.log(beta_tilde))
      np.testing.assert_allclose(var, want, rtol=2e-4, err_msg=(t, s, f))
      np.testing.assert_allclose(np.asarray(at0), mean, rtol=1e-4, atol=1e-5)
  # The full grid: the respaced beta' and beta~' are the schedule's own beta_t and beta~_t.
  beta_t, bt_t = ddpm_learned.respaced_variances(ab[500], ab[499])
  np.testing.assert_allclose(beta_t, np.asarray(schedule.betas, np.float64)[500], rtol=1e-5)
  np.testing.assert_allclose(bt_t, (1 - ab[499]) / (1 - ab[500]) * beta_t, rtol=1e-12)


M, S2 = 0.3, 0.25  # 1-D Gaussian data N(M, S2)
SCHEDULE = make_schedule("cosine", 1000)


def _exact_eps(ab, x):
  """E[eps | x_t] for data N(M, S2): x_t ~ N(sqrt(ab) M, ab S2 + 1 - ab)."""
  return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * M) / (ab * S2 + 1 - ab)


@dataclasses.dataclass(frozen=True)
class OptimalVariance:
  """The exact eps and the fraction of the optimal variance of each respaced step of `grid`:
  Sigma* = beta~' + c0'^2 Var(x0 | x_t), the variance of the true reverse q(x_s | x_t), which
  lies in [beta~', beta'] when S2 <= 1. mode "beta"/"beta_tilde" fixes f = 1/0 instead."""

  grid: tuple
  mode: str = "optimal"

  def __call__(self, params, x, t, y):
    grid = jnp.asarray(self.grid, jnp.float32)
    ab_t = SCHEDULE.alpha_bar_at(t)[:, None]
    eps = _exact_eps(ab_t, x)
    if self.mode != "optimal":
      return eps, jnp.full(x.shape, 1.0 if self.mode == "beta" else 0.0)
    i = jnp.argmin(jnp.abs(grid[:, None] - t[None]), axis=0)
    ab_s = SCHEDULE.alpha_bar_at(grid[jnp.minimum(i + 1, len(self.grid) - 1)])[:, None]
    beta, beta_tilde = ddpm_learned.respaced_variances(ab_t, ab_s)
    c0 = jnp.sqrt(ab_s) * beta / (1 - ab_t)
    best = beta_tilde + c0**2 * S2 * (1 - ab_t) / (ab_t * S2 + 1 - ab_t)
    frac = jnp.log(best / beta_tilde) / jnp.log(beta / beta_tilde)
    return eps, jnp.broadcast_to(frac, x.shape)


def _propagate(grid, mode):
  """Exact float64 (mean, variance) of the chain's state after each step from N(0, 1)."""
  ab = lambda u: float(SCHEDULE.alpha_bar_at(u))  # noqa: E731
  mean, var, out = 0.0, 1.0, []
  for t, s in zip(grid[:-1], grid[1:]):
    at, as_ = ab(t), ab(s)
    k = np.sqrt(at) * S2 / (at * S2 + 1 - at)  # E[x0 | x_t] = M + k (x_t - sqrt(at) M)
    if s == 0:
      mean, var = M + k * (mean - np.sqrt(at) * M), k * k * var
    else:
      beta = 1 - at / as_
      beta_tilde = (1 - as_) / (1 - at) * beta
      c0, ct = np.sqrt(as_) * beta / (1 - at), np.sqrt(1 - beta) * (1 - as_) / (1 - at)
      best = beta_tilde + c0**2 * S2 * (1 - at) / (at * S2 + 1 - at)
      sigma = {"optimal": best, "beta": beta, "beta_tilde": beta_tilde}[mode]
      mean, var = (c0 * k + ct) * mean + c0 * (1 - k * np.sqrt(at)) * M, (c0 * k + ct) ** 2 * var + sigma
    out.append((mean, var))
  return out


def test_learned_sampler_with_the_optimal_variance_reproduces_the_data_law():
  """Exact eps of N(0.3, 0.25) data, 5 coarse steps ending with a tiny one: with the optimal
  variance every state has the true marginal q(x_s) and the output the data's variance; the
  fixed beta~ (too little noise) and beta (too much) chains miss it by > 50 standard errors."""
  grid = (start_time(SCHEDULE, 80.0), 0.6, 0.3, 0.1, 0.002, 0.0)
  n = 100_000
  x_init = jax.random.normal(jax.random.key(0), (n, 1))
  for mode in ("optimal", "beta_tilde", "beta"):
    x, traj = solver_sample(OptimalVariance(grid, mode), None, SCHEDULE, x_init,
                            jax.random.key(1), sampler="ddpm_learned", times=grid,
                            return_trajectory=True)
    exact = _propagate(grid, mode)
    for (m, v), state in zip(exact, np.asarray(traj, np.float64)[..., 0]):
      se_m, se_v = np.sqrt(v / n), v * np.sqrt(2 / n)
      assert abs(state.mean() - m) < 5 * se_m and abs(state.var() - v) < 5 * se_v, (mode, m, v)
    out_var = np.asarray(x, np.float64).var()
    se = S2 * np.sqrt(2 / n)
    if mode == "optimal":
      for (m, v), s in zip(exact[:-1], grid[1:-1]):  # the true marginals of x_s
        ab = float(SCHEDULE.alpha_bar_at(s))
        np.testing.assert_allclose([m, v], [np.sqrt(ab) * M, ab * S2 + 1 - ab], rtol=1e-3,
                                   atol=1e-4)
      assert abs(out_var - S2) < 5 * se and abs(np.asarray(x).mean() - M) < 0.01
    else:
      assert abs(out_var - S2) > 50 * se, (mode, out_var)


def _exact_eps_fn(params, x, t, y):
  return _exact_eps(SCHEDULE.alpha_bar_at(t)[:, None], x)


def test_fraction_zero_is_the_ddpm_solver():
  """f = 0 (Sigma = beta~) on the default grid: the registered `ddpm` solver, same noise; an
  eps-only model (no fraction) is `ddpm` bit for bit."""
  x_init = jax.random.normal(jax.random.key(0), (512, 1))
  for steps in (3, 10):
    ref = solver_sample(_exact_eps_fn, None, SCHEDULE, x_init, jax.random.key(2),
                        sampler="ddpm", num_steps=steps)
    got = solver_sample(ddpm_learned.FixedFraction(_exact_eps_fn, 0.0), None, SCHEDULE,
                        x_init, jax.random.key(2), sampler="ddpm_learned", num_steps=steps)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-6)
    plain = solver_sample(_exact_eps_fn, None, SCHEDULE, x_init, jax.random.key(2),
                          sampler="ddpm_learned", num_steps=steps)
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(ref))
  # The learned solver spends one evaluation per step, and steps_for_nfe inverts that.
  assert samplers_nfe("ddpm_learned", 7) == 7 and steps_for_nfe("ddpm_learned", 7) == 7


# ------------------------------------------------------------------------ the process


def test_builder_makes_a_unet_with_2c_outputs_and_names_bad_config_keys():
  process, params = _tiny_process()
  assert process.model.out_channels == 2 and process.vlb_weight == 0.001
  x = jnp.asarray(LEVELS / (L - 1) * 2 - 1, jnp.float32)
  full = jax.jit(process.predict_full)(params, x, jnp.array([0.5, 0.9]), jnp.array([0, 3]))
  assert full.shape == (2, 2, 2, 2) and float(jnp.std(full[..., 1])) > 0
  data = Dataset("pts", "points", np.zeros((4, 2), np.float32), np.zeros(4, np.int32),
                 np.zeros((4, 2), np.float32), np.zeros(4, np.int32), 2)
  with pytest.raises(ConfigError, match="'dataset'"):
    build("gaussian_learned_var", unet_section(), data, diffusion=diffusion_section())
  with pytest.raises(ConfigError, match="'diffusion.target'"):
    _tiny_process(target="x0")
  with pytest.raises(ConfigError, match="'learned_variance.vlb_weight'"):
    build("gaussian_learned_var", unet_section(), Dataset(
        "tiny", "image", LEVELS.astype(np.uint8), np.zeros(2, np.int32),
        LEVELS.astype(np.uint8), np.zeros(2, np.int32), 3, L),
        diffusion=diffusion_section(), learned_variance={"vlb_weight": -1.0})
  with pytest.raises(ValueError, match="out_channels=None"):
    lv.LearnedVarianceDiffusion(TinyNet(None), 3, data_shape=(2, 2, 1), num_levels=L)


def test_process_specs_nfe_and_guidance():
  process, params = _cheap_process()
  assert process.nfe("ddpm_learned:7") == 7 and process.nfe("ddim:5") == 5
  assert process.nfe("ddpm_learned:7", guidance=Guidance(2.0)) == 14
  with pytest.raises(ValueError, match="no option.*eta"):
    process.nfe("ddpm_learned:7:eta=1")
  with pytest.raises(ValueError, match="needs a step count"):
    process.nfe("ddpm_learned")
  with pytest.raises(ValueError, match="known: .*ddpm, ddpm_learned"):
    process.nfe("nope:3")
  x = jnp.asarray(LEVELS / (L - 1) * 2 - 1, jnp.float32)
  u, y = jnp.array([0.5, 0.9]), jnp.array([0, 3])
  full = process.predict_full(params, x, u, y)
  assert full.shape == (2, 2, 2, 2)
  eps, frac = process.eps_frac_fn(params, x, u, y)
  np.testing.assert_allclose(np.asarray(process.eps_fn(params, x, u, y)), np.asarray(eps))
  np.testing.assert_allclose(np.asarray(frac), (np.asarray(full[..., 1:]) + 1) / 2, rtol=1e-6)
  # Guidance: eps by the usual rule, f from the conditional stream; w = 1 is the plain model.
  cond = guidance_cond(y, Guidance(0.0), process.null_label)
  g_eps, g_frac = ddpm_learned.guided(process.eps_frac_fn)(params, x, u, cond)
  null_eps, _ = process.eps_frac_fn(params, x, u, jnp.full(2, process.null_label))
  np.testing.assert_allclose(np.asarray(g_eps), np.asarray(null_eps), atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_frac), np.asarray(frac), atol=1e-6)
  labels = np.array([0, 1, 3])
  a = process.sample_unit(params, jax.random.key(0), labels, "ddpm_learned:4")
  b = process.sample_unit(params, jax.random.key(0), labels, "ddpm_learned:4",
                          guidance=Guidance(1.0))
  assert a.shape == (3, 2, 2, 1) and bool(jnp.all(jnp.isfinite(a)))
  np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
  assert process.sample(params, jax.random.key(0), labels, "ddpm_learned:4").dtype == np.uint8
