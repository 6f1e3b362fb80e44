"""Diffusion samplers against closed forms: Gaussian data has an exact eps(x, t)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.processes import guidance
from ardiff.processes.guidance import Guidance
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.processes.gaussian.samplers import SAMPLERS, sample, sample_python_loop
from ardiff.processes.gaussian.schedules import make_schedule
from ardiff.processes.gaussian.targets import (TARGETS, noisy_sample_and_target, prediction_to_eps)
from ardiff.models.mlp import MLPDenoiser

MU = np.array([1.0, -0.5])
SIGMA = np.array([[0.5, 0.2], [0.2, 0.3]])
SCHEDULE = make_schedule("cosine", 1000)


def gaussian_eps(params, x, t, cond):
  """Exact E[eps | x_t] for x0 ~ N(mu, Sigma): sqrt(1-ab) Cov_t^{-1} (x - sqrt(ab) mu), at
  real times t [B] in [0, 1]."""
  mu, sigma = params["mu"], params["sigma"]
  ab = SCHEDULE.alpha_bar_at(t)[:, None, None]
  cov = ab * sigma + (1 - ab) * jnp.eye(2)
  resid = x - jnp.sqrt(ab[:, :, 0]) * mu
  return jnp.sqrt(1 - ab[:, :, 0]) * jnp.linalg.solve(cov, resid[..., None])[..., 0]


def class_gaussian_eps(params, x, t, y):
  """Class c has mean means[c]; the null label (last row) is the mixture's moment match."""
  means = params["means"][y]
  return gaussian_eps({"mu": means, "sigma": params["sigma"]}, x, t, None)


PARAMS = {"mu": jnp.asarray(MU, jnp.float32), "sigma": jnp.asarray(SIGMA, jnp.float32)}


def _draw(sampler, steps, n=4000, seed=0, **options):
  x_init = jax.random.normal(jax.random.key(seed), (n, 2))
  return np.asarray(sample(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(seed + 1),
                           sampler=sampler, num_steps=steps, **options), np.float64)


# The exact-law references below start at t = T and visit the integer training grid, as the
# papers' samplers do: the library's 'trailing' spacing with sigma_max beyond the schedule's.
ON_TRAINING_GRID = {"spacing": "trailing", "sigma_max": float("inf")}


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddim", 100), ("ddim", 20)])
def test_samplers_reproduce_gaussian_moments(sampler, steps):
  x = _draw(sampler, steps)
  # 4000 samples: std error of the mean ~0.011, of the covariance entries ~0.011.
  np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
  np.testing.assert_allclose(np.cov(x.T), SIGMA, atol=0.06)


def test_ddpm_without_noise_collapses_toward_mean():
  x = _draw("ddpm", 1000, noise=0.0)
  np.testing.assert_allclose(x.mean(0), MU, atol=0.05)
  # Following the posterior mean shrinks every step: variance nearly vanishes.
  assert np.trace(np.cov(x.T)) < 0.1 * np.trace(SIGMA)


def test_ddim_eta0_is_deterministic_given_initial_noise():
  x_init = jax.random.normal(jax.random.key(3), (64, 2))
  a = sample(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(0), sampler="ddim",
             num_steps=25)
  b = sample(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(99), sampler="ddim",
             num_steps=25)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = sample(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(99), sampler="ddim",
             num_steps=25, eta=1.0)
  assert not np.allclose(np.asarray(a), np.asarray(c))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_scan_equals_python_loop(sampler):
  x_init = jax.random.normal(jax.random.key(3), (32, 2))
  a = sample(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(5), sampler=sampler,
             num_steps=10)
  b = sample_python_loop(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(5),
                         sampler=sampler, num_steps=10)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_trajectory_ends_at_sample():
  x_init = jax.random.normal(jax.random.key(3), (8, 2))
  x0, traj = sample(gaussian_eps, PARAMS, SCHEDULE, x_init, jax.random.key(1), sampler="ddim",
                    num_steps=7, return_trajectory=True)
  assert traj.shape == (7, 8, 2)
  np.testing.assert_array_equal(np.asarray(traj[-1]), np.asarray(x0))


def test_guidance_scale_zero_is_unconditional_and_one_is_conditional():
  params = {"means": jnp.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0]]), "sigma": PARAMS["sigma"]}
  x = jax.random.normal(jax.random.key(0), (16, 2))
  t = jnp.full((16,), 0.5)
  y = jnp.zeros((16,), jnp.int32)
  guided = guidance.guided(class_gaussian_eps)
  uncond = class_gaussian_eps(params, x, t, jnp.full((16,), 2))
  cond = class_gaussian_eps(params, x, t, y)
  g0 = guided(params, x, t, guidance.guidance_cond(y, Guidance(0.0), 2))
  g1 = guided(params, x, t, guidance.guidance_cond(y, Guidance(1.0), 2))
  g3 = guided(params, x, t, guidance.guidance_cond(y, Guidance(3.0), 2))
  np.testing.assert_allclose(g0, uncond, atol=1e-6)
  np.testing.assert_allclose(g1, cond, atol=1e-6)
  np.testing.assert_allclose(g3, uncond + 3 * (cond - uncond), atol=1e-5)
  # Negative conditioning replaces the unconditional stream by the negative class.
  gneg = guided(params, x, t, guidance.guidance_cond(y, Guidance(0.0, negative=1), 2))
  np.testing.assert_allclose(gneg, class_gaussian_eps(params, x, t, jnp.ones(16, jnp.int32)),
                             atol=1e-6)


def test_guidance_pulls_samples_to_their_class():
  params = {"means": jnp.array([[1.5, 0.0], [-1.5, 0.0], [0.0, 0.0]]), "sigma": PARAMS["sigma"]}
  x_init = jax.random.normal(jax.random.key(0), (2000, 2))
  y = jnp.zeros((2000,), jnp.int32)
  out = {}
  for w in (1.0, 3.0):
    x = sample(guidance.guided(class_gaussian_eps), params, SCHEDULE, x_init, jax.random.key(1),
               guidance.guidance_cond(y, Guidance(w), 2), sampler="ddim", num_steps=50)
    out[w] = float(jnp.mean(x[:, 0]))
  np.testing.assert_allclose(out[1.0], 1.5, atol=0.05)  # w=1 is the class distribution itself
  assert out[3.0] > out[1.0] + 0.5  # w>1 pushes further along the class direction


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_schedule_alpha_bar_is_monotone_and_ends_near_zero(name):
  for T in (10, 1000):
    s = make_schedule(name, T)
    ab = np.asarray(s.alpha_bars, np.float64)
    assert ab.shape == (T + 1,) and ab[0] == 1.0
    assert np.all(np.diff(ab) < 0)
    assert ab[-1] < 1e-3
    np.testing.assert_allclose(ab[1:], np.cumprod(1 - np.asarray(s.betas[1:], np.float64)),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("target", TARGETS)
def test_exact_target_prediction_recovers_true_eps(target):
  """If the network predicted its target's conditional mean exactly, the implied eps is exact.

  For eps/x0/v a per-sample check is exact. For next_step the target is random given x_t, so
  check with the posterior mean instead (its regression optimum), written here from the paper
  (Ho et al. eq. 7), not from the library's posterior_from_alpha_bars."""
  key = jax.random.key(0)
  x0 = jax.random.normal(key, (64, 2))
  t = jax.random.randint(jax.random.key(1), (64,), 1, 1001)
  ab = SCHEDULE.alpha_bars[t][:, None]
  if target == "next_step":
    x_t, _ = noisy_sample_and_target("next_step", SCHEDULE, x0, t, jax.random.key(2))
    ab_prev = SCHEDULE.alpha_bars[t - 1][:, None]
    alpha = ab / ab_prev
    pred = (jnp.sqrt(ab_prev) * (1 - alpha) * x0 + jnp.sqrt(alpha) * (1 - ab_prev) * x_t) / (1 - ab)
  else:
    x_t, pred = noisy_sample_and_target(target, SCHEDULE, x0, t, jax.random.key(2))
  eps_true = (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
  eps = prediction_to_eps(target, SCHEDULE, pred, x_t, t)
  ok = np.asarray(t) < 990  # near T the x0 -> eps map divides by ~0 for next_step
  # float32 round trip through the posterior mean: max error 0.012 for t < 990 (a coefficient
  # without its square root: 1.4)
  np.testing.assert_allclose(np.asarray(eps)[ok], np.asarray(eps_true)[ok],
                             atol=0.02 if target == "next_step" else 2e-3)


def test_point_standardisation_round_trips_and_reaches_the_network():
  """Points: model space is (x - center) / scale per dimension; samples come back in data space."""
  model = MLPDenoiser(1, width=16, depth=1)
  proc = GaussianDiffusion(model, num_classes=1, num_timesteps=50, data_shape=(2,),
                           data_center=(3.0, -1.0), data_scale=(2.0, 0.5))
  x = jnp.array([[3.0, -1.0], [5.0, -0.5], [-1.0, 0.0]])
  np.testing.assert_allclose(np.asarray(proc.to_model(x)), [[0, 0], [1, 1], [-2, 2]], atol=1e-6)
  np.testing.assert_allclose(np.asarray(proc.to_data(proc.to_model(x))), np.asarray(x),
                             atol=1e-6)
  # The loss sees standardised data: shifting the batch by the center changes nothing.
  plain = GaussianDiffusion(model, num_classes=1, num_timesteps=50, data_shape=(2,))
  params = proc.init_params(jax.random.key(0), {"x": x, "y": jnp.zeros(3, jnp.int32)})
  batch = {"x": x, "y": jnp.zeros(3, jnp.int32)}
  std_batch = {"x": proc.to_model(x), "y": batch["y"]}
  np.testing.assert_allclose(float(proc.loss(params, batch, jax.random.key(1), train=False)[0]),
                             float(plain.loss(params, std_batch, jax.random.key(1),
                                              train=False)[0]), rtol=1e-6)
  with pytest.raises(ValueError, match="data_center is for points"):
    GaussianDiffusion(model, num_classes=1, data_shape=(2,), data_center=(0.0,))


def test_next_step_forward_chain_matches_marginal():
  """x_t drawn through x_{t-1} has the marginal N(sqrt(ab_t) x0, 1 - ab_t)."""
  x0 = jnp.ones((20000, 1)) * 0.7
  t = jnp.full((20000,), 300)
  x_t, x_prev = noisy_sample_and_target("next_step", SCHEDULE, x0, t, jax.random.key(0))
  ab = float(SCHEDULE.alpha_bars[300])
  np.testing.assert_allclose(float(x_t.mean()), np.sqrt(ab) * 0.7, atol=0.02)
  np.testing.assert_allclose(float(x_t.var()), 1 - ab, atol=0.02)


def test_unknown_sampler_and_option_errors():
  x = jnp.zeros((2, 2))
  with pytest.raises(ValueError, match="unknown diffusion sampler 'euler'.*ddim, ddpm"):
    sample(gaussian_eps, PARAMS, SCHEDULE, x, jax.random.key(0), sampler="euler")
  with pytest.raises(ValueError, match="no option"):
    sample(gaussian_eps, PARAMS, SCHEDULE, x, jax.random.key(0), sampler="ddim", noise=0.0)
  with pytest.raises(ValueError, match="num_steps"):
    sample(gaussian_eps, PARAMS, SCHEDULE, x, jax.random.key(0), sampler="ddim", num_steps=0)
  with pytest.raises(ValueError, match="unknown time-step spacing 'cosine'"):
    sample(gaussian_eps, PARAMS, SCHEDULE, x, jax.random.key(0), sampler="ddim", num_steps=5,
           spacing="cosine")
  # An option with a few meaningful values takes only those (in the loop, UniPC's order 5
  # would silently run order 3, bh 1.5 bh2).
  for option, bad in (("order", 4.0), ("order", 2.5), ("bh", 3.0)):
    with pytest.raises(ValueError, match=f"'unipc': option {option} must be one of"):
      sample(gaussian_eps, PARAMS, SCHEDULE, x, jax.random.key(0), sampler="unipc",
             num_steps=5, **{option: bad})
  assert {"ddpm", "ddim"} <= set(SAMPLERS.names())


# ----------------------------------------------------------------------------- exact laws
# Independent references, written from the papers' formulas in float64 (not from the library).


def _published_cosine_alpha_bars(T: int, s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s)
  pi/2), with betas 1 - alpha_bar(t)/alpha_bar(t-1) clipped at 0.999 (only the last step is)."""
  f = np.cos((np.arange(T + 1) / T + s) / (1 + s) * np.pi / 2) ** 2
  betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
  return np.concatenate([[1.0], np.cumprod(1 - betas)])


def _published_linear_alpha_bars(T: int) -> np.ndarray:
  """Ho et al. (2020): betas linear from 1e-4 to 0.02 at T = 1000; for other T the same
  endpoints scaled by 1000 / T (improved-diffusion's rescaling), alpha_bar = prod (1 - beta);
  below T = 50 the scaled betas pass 1, and are clipped at 0.999 as in the cosine schedule."""
  betas = np.minimum(np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T), 0.999)
  return np.concatenate([[1.0], np.cumprod(1 - betas)])


def _exact_sampler_law(sampler, num_steps, eta=0.0, noise=1.0, T=1000):
  """Mean and covariance of the sampler's output for data N(MU, SIGMA) with the exact eps.

  Every step is affine in x_t plus Gaussian noise, so starting from x_T ~ N(0, I) the output is
  exactly Gaussian: propagate (mean, cov) through x_s = A x_t + b + sigma z in float64.
  DDIM (Song et al. 2021, eq. 12 and 16):
    x_s = sqrt(ab_s) x0 + sqrt(1 - ab_s - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s);
  DDPM on strided steps (Ho et al. 2020, eq. 6-7, with alpha_t -> ab_t / ab_s):
    x_s = c0 x0 + ct x_t + noise * sqrt(var) z.
  """
  ab = _published_cosine_alpha_bars(T)
  ts = np.round(np.linspace(T, 0, num_steps + 1)).astype(int)
  mean, cov = np.zeros(2), np.eye(2)
  for t, s in zip(ts[:-1], ts[1:]):
    c_t = ab[t] * SIGMA + (1 - ab[t]) * np.eye(2)
    x0_map = np.sqrt(ab[t]) * SIGMA @ np.linalg.inv(c_t)  # E[x0|x_t] = x0_map x_t + x0_off
    x0_off = MU - x0_map @ (np.sqrt(ab[t]) * MU)
    eps_map = (np.eye(2) - np.sqrt(ab[t]) * x0_map) / np.sqrt(1 - ab[t])
    eps_off = -np.sqrt(ab[t]) * x0_off / np.sqrt(1 - ab[t])
    if sampler == "ddim":
      var = eta**2 * (1 - ab[s]) / (1 - ab[t]) * (1 - ab[t] / ab[s])
      d = np.sqrt(max(1 - ab[s] - var, 0.0))
      a_mat, b_vec = np.sqrt(ab[s]) * x0_map + d * eps_map, np.sqrt(ab[s]) * x0_off + d * eps_off
    else:
      a_ts = ab[t] / ab[s]
      c0 = np.sqrt(ab[s]) * (1 - a_ts) / (1 - ab[t])
      ct = np.sqrt(a_ts) * (1 - ab[s]) / (1 - ab[t])
      var = noise**2 * (1 - ab[s]) / (1 - ab[t]) * (1 - a_ts)
      a_mat, b_vec = c0 * x0_map + ct * np.eye(2), c0 * x0_off
    mean, cov = a_mat @ mean + b_vec, a_mat @ cov @ a_mat.T + var * np.eye(2)
  return mean, cov


def _assert_gaussian_moments(x, mean, cov, z=5.0, slack=1e-4):
  """Sample mean and covariance within z standard errors of (mean, cov) (Gaussian formulas:
  Var(mean_i) = C_ii / n, Var(S_ij) = (C_ii C_jj + C_ij^2) / n); slack covers float32 rounding."""
  n = len(x)
  se_mean = np.sqrt(np.diag(cov) / n)
  se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
  err_mean, err_cov = np.abs(x.mean(0) - mean), np.abs(np.cov(x.T) - cov)
  assert (err_mean < z * se_mean + slack).all(), (x.mean(0), mean, se_mean)
  assert (err_cov < z * se_cov + slack).all(), (np.cov(x.T), cov, se_cov)


# Few steps, where each option changes the law most. Power against plausible one-line bugs, in
# exact covariance entry [0, 0] (standard error ~0.0018 at n = 100k, tolerance 5 se):
#   DDIM eta=1 without the (1-ab_s)/(1-ab_t) factor in sigma: 0.3945 -> 0.3653 (16 se);
#   DDPM-20 with the one-step variance (1 - ab_t/ab_s) instead of the strided posterior
#   variance: 0.3945 -> 0.5196 (70 se); eta = 0 vs 1 differ by 0.043 (24 se).
@pytest.mark.parametrize("sampler,steps,options", [
    ("ddim", 20, {"eta": 0.0}), ("ddim", 20, {"eta": 0.5}), ("ddim", 20, {"eta": 1.0}),
    ("ddim", 8, {"eta": 1.0}), ("ddpm", 20, {}), ("ddpm", 8, {}), ("ddpm", 20, {"noise": 0.0}),
], ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={x}" for k, x in v.items()))
def test_sampler_output_has_its_exact_gaussian_law(sampler, steps, options):
  x = _draw(sampler, steps, n=100_000, **options, **ON_TRAINING_GRID)
  mean, cov = _exact_sampler_law(sampler, steps, **options)
  _assert_gaussian_moments(x, mean, cov)


def test_exact_laws_approach_the_data_law_and_ddim_eta1_equals_ddpm():
  """The references themselves: more steps -> the data law; DDIM eta=1 and DDPM coincide."""
  for sampler, options in (("ddim", {"eta": 0.0}), ("ddim", {"eta": 1.0}), ("ddpm", {})):
    errors = [np.abs(_exact_sampler_law(sampler, n, **options)[1] - SIGMA).max()
              for n in (10, 100, 1000)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.01, (sampler, errors)
  a, b = _exact_sampler_law("ddim", 20, eta=1.0), _exact_sampler_law("ddpm", 20)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-10)
  # Without injected noise DDPM shrinks toward the mean (figure 3's collapse).
  assert np.trace(_exact_sampler_law("ddpm", 1000, noise=0.0)[1]) < 0.1 * np.trace(SIGMA)


@pytest.mark.parametrize("T", [10, 200, 1000])
def test_schedules_match_their_published_formulas(T):
  np.testing.assert_allclose(np.asarray(make_schedule("linear", T).alpha_bars, np.float64),
                             _published_linear_alpha_bars(T), rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(make_schedule("cosine", T).alpha_bars, np.float64),
                             _published_cosine_alpha_bars(T), rtol=2e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(SCHEDULE.alpha_bars[jnp.array([1, 500, 999])], np.float64),
                             _published_cosine_alpha_bars(1000)[[1, 500, 999]], rtol=1e-5)


# ----------------------------------------------------------------------------- the loss


class _ExactGaussianPredictor(nn.Module):
  """The Bayes-optimal network for x0 ~ N(MU, SIGMA): E[target | x_t] in closed form.

  Reads t / T like the library's networks; alpha_bar from the published cosine formula.
  """

  target: str
  T: int

  @nn.compact
  def __call__(self, x, t_frac, y, train=False):
    del y, train
    ab_all = jnp.asarray(_published_cosine_alpha_bars(self.T), jnp.float32)
    t = jnp.round(t_frac * self.T).astype(jnp.int32)
    ab = ab_all[t][:, None]
    mu, sigma = jnp.asarray(MU, jnp.float32), jnp.asarray(SIGMA, jnp.float32)
    cov = ab[:, :, None] * sigma + (1 - ab[:, :, None]) * jnp.eye(2)
    x0 = mu + jnp.sqrt(ab) * (sigma @ jnp.linalg.solve(cov, (x - jnp.sqrt(ab) * mu)[..., None])
                              )[..., 0]
    eps = (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
    if self.target == "eps":
      return eps
    if self.target == "x0":
      return x0
    if self.target == "v":
      return jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0
    ab_prev = ab_all[t - 1][:, None]  # next_step: E[x_{t-1} | x_t], the posterior mean
    a = ab / ab_prev
    return (jnp.sqrt(ab_prev) * (1 - a) * x0 + jnp.sqrt(a) * (1 - ab_prev) * x) / (1 - ab)


def _exact_loss(target: str, T: int) -> float:
  """E over t ~ U{1..T} of tr Cov(target | x_t) / d, the Bayes risk of each target (float64).

  Cov(x0 | x_t) = S - ab S C^-1 S with C = ab S + (1 - ab) I; eps = (x_t - sqrt(ab) x0) /
  sqrt(1 - ab) and v = sqrt(ab) eps - sqrt(1 - ab) x0 = const - x0 / sqrt(1 - ab) given x_t;
  x_{t-1} given x_t has the posterior variance plus c0^2 Cov(x0 | x_t).
  """
  ab = _published_cosine_alpha_bars(T)
  risks = []
  for t in range(1, T + 1):
    c_t = ab[t] * SIGMA + (1 - ab[t]) * np.eye(2)
    cov_x0 = SIGMA - ab[t] * SIGMA @ np.linalg.inv(c_t) @ SIGMA
    cov = {"x0": cov_x0, "eps": ab[t] / (1 - ab[t]) * cov_x0, "v": cov_x0 / (1 - ab[t])}
    a = ab[t] / ab[t - 1]
    c0 = np.sqrt(ab[t - 1]) * (1 - a) / (1 - ab[t])
    cov["next_step"] = (1 - ab[t - 1]) / (1 - ab[t]) * (1 - a) * np.eye(2) + c0**2 * cov_x0
    risks.append(np.trace(cov[target]) / 2)
  return float(np.mean(risks))


@pytest.mark.parametrize("target", TARGETS)
def test_loss_of_the_exact_model_is_the_bayes_risk(target):
  """GaussianDiffusion.loss with the exact predictor averages to the closed-form Bayes risk.

  T = 10, so an off-by-one in the timestep draw (t in 0..T-1 instead of 1..T) moves the mean
  by a tenth of the difference between the first and last step's risk (many standard errors),
  and a wrong noising or target formula leaves the Bayes optimum and raises the loss.
  """
  T, n, reps = 10, 50_000, 8
  proc = GaussianDiffusion(_ExactGaussianPredictor(target, T), num_classes=1,
                           schedule_name="cosine", num_timesteps=T, target=target)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.multivariate_normal(MU, SIGMA, size=n), jnp.float32)
  batch = {"x": x0, "y": jnp.zeros(n, jnp.int32)}
  loss = jax.jit(lambda k: proc.loss({}, batch, k, train=False)[0])
  values = np.array([float(loss(jax.random.key(i))) for i in range(reps)])
  exact = _exact_loss(target, T)
  se = values.std(ddof=1) / np.sqrt(reps)
  assert abs(values.mean() - exact) < 5 * se + 1e-4 * exact, (values.mean(), exact, se)


def test_label_dropping_at_p_uncond_one_trains_the_null_label():
  model = MLPDenoiser(3, width=16, depth=1)
  drop_all = GaussianDiffusion(model, num_classes=3, num_timesteps=50, p_uncond=1.0)
  x = jax.random.normal(jax.random.key(0), (64, 2))
  y = jnp.arange(64, dtype=jnp.int32) % 3
  params = drop_all.init_params(jax.random.key(1), {"x": x, "y": y})
  key = jax.random.key(2)
  dropped = drop_all.loss(params, {"x": x, "y": y}, key, train=True)[0]
  null = drop_all.loss(params, {"x": x, "y": jnp.full_like(y, 3)}, key, train=False)[0]
  kept = drop_all.loss(params, {"x": x, "y": y}, key, train=False)[0]
  np.testing.assert_allclose(float(dropped), float(null), rtol=1e-6)
  assert abs(float(kept) - float(null)) > 1e-4  # the label matters, so the check has teeth


def test_clip_x0_clips_the_implied_x0_and_nothing_else():
  T, clip = 100, 0.5
  model = MLPDenoiser(1, width=16, depth=1)
  plain = GaussianDiffusion(model, num_classes=1, num_timesteps=T, schedule_name="linear")
  clipped = GaussianDiffusion(model, num_classes=1, num_timesteps=T, schedule_name="linear",
                              clip_x0=clip)
  x = 2.0 * jax.random.normal(jax.random.key(0), (256, 2))
  t = jnp.asarray(np.tile([1, 5, 30, 70, 100], 52)[:256], jnp.int32)
  y = jnp.zeros(256, jnp.int32)
  params = plain.init_params(jax.random.key(1), {"x": x, "y": y})
  eps = np.asarray(plain.eps_fn(params, x, t / T, y), np.float64)
  ab = _published_linear_alpha_bars(T)[np.asarray(t)][:, None]
  xn = np.asarray(x, np.float64)
  x0 = np.clip((xn - np.sqrt(1 - ab) * eps) / np.sqrt(ab), -clip, clip)
  expected = (xn - np.sqrt(ab) * x0) / np.sqrt(1 - ab)
  got = np.asarray(clipped.eps_fn(params, x, t / T, y), np.float64)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
  unclipped_x0 = (xn - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
  inside = np.abs(unclipped_x0) < clip
  assert inside.any() and (~inside).any()  # both branches exercised
  np.testing.assert_allclose(got[inside], eps[inside], rtol=1e-4, atol=1e-4)
