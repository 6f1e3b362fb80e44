"""The diffusion bound against independent float64 computations and known likelihoods.

The references below are written from the textbook formulas (Gaussian KL of the posterior and
model transitions in x-space, scipy's normal CDF for the decoder, Gauss-Hermite quadrature for
expectations), not from the library's eps-space form.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from ardiff.processes.gaussian.likelihood import bpd, discretized_gaussian_log_probs, vlb_terms
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.processes.gaussian.schedules import make_schedule

L = 17
HALF = 1 / (L - 1)


def _bin_mass(lo, hi, mean, std):
  """P(lo < N(mean, std^2) < hi) in float64, from the tail that keeps it accurate."""
  lower = norm.cdf(hi, mean, std) - norm.cdf(lo, mean, std)
  upper = norm.sf(lo, mean, std) - norm.sf(hi, mean, std)
  return np.where(lo > mean, upper, lower)


def _bin_edges(levels):
  """Lower and upper edges of each level's bin, the edge bins open to -inf / +inf."""
  x0 = levels / (L - 1) * 2 - 1
  return (np.where(levels == 0, -np.inf, x0 - HALF), np.where(levels == L - 1, np.inf, x0 + HALF))


def _reference_decoder_probs(mean, std):
  """P(level k), k = 0..L-1, under N(mean, std^2) binned at the level centres."""
  return _bin_mass(*_bin_edges(np.arange(L)), mean, std)


@pytest.mark.parametrize("mean,std", [(0.0, 0.1), (0.93, 0.01), (-1.4, 0.3), (3.0, 0.05),
                                      (0.2, 1e-4), (0.0, 5.0), (-40.0, 1.0), (1.0, 1e3),
                                      (0.0625, 0.02)])
def test_decoder_probabilities_sum_to_one_and_match_scipy(mean, std):
  logp = np.asarray(discretized_gaussian_log_probs(jnp.float32(mean), jnp.float32(std), L),
                    np.float64)
  assert logp.shape == (L,) and np.all(np.isfinite(logp)) and np.all(logp <= 0)
  assert abs(np.logaddexp.reduce(logp)) < 1e-5  # sum of probabilities is one
  ref = _reference_decoder_probs(mean, std)
  np.testing.assert_allclose(np.exp(logp), ref, atol=2e-6)
  # Tail bins too: where the mass is representable in float64, the log agrees closely.
  big = ref > 1e-300
  np.testing.assert_allclose(logp[big], np.log(ref[big]), rtol=1e-4, atol=2e-4)


def test_decoder_broadcasts_mean_against_std():
  mean = np.linspace(-1.2, 1.2, 6, dtype=np.float32).reshape(2, 3)
  logp = np.asarray(discretized_gaussian_log_probs(jnp.asarray(mean), jnp.float32(0.07), L))
  assert logp.shape == (2, 3, L)
  for idx in np.ndindex(2, 3):
    np.testing.assert_allclose(np.exp(logp[idx]), _reference_decoder_probs(mean[idx], 0.07),
                               atol=2e-6)
  with pytest.raises(ValueError, match="num_levels"):
    discretized_gaussian_log_probs(mean, 0.1, 1)


def _constant_x0_eps(schedule, m):
  """The eps_fn whose implied x0 prediction is m everywhere: every term is deterministic.

  With m = a level configuration this is the EXACT eps of the point mass at m.
  """
  def eps_fn(params, x, t, y):
    ab = schedule.alpha_bar_at(t).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x - jnp.sqrt(ab) * m) / jnp.sqrt(1 - ab)
  return eps_fn


def _gaussian_kl(m1, v1, m2, v2):
  return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)


def _posterior(ab, betas, t):
  """Mean coefficients (on x0, on x_t) and variance of q(x_{t-1} | x_t, x0), float64."""
  c0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
  ct = np.sqrt(1 - betas[t]) * (1 - ab[t - 1]) / (1 - ab[t])
  return c0, ct, (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]


def _float64(schedule):
  return np.asarray(schedule.alpha_bars, np.float64), np.asarray(schedule.betas, np.float64)


def _reference_constant_x0_terms(levels, m, schedule):
  """Float64 terms (bits/dim) for the constant-x0 model: the posterior means differ by
  c0 (x0 - m), whatever x_t is, so each KL is a closed form."""
  ab, betas = _float64(schedule)
  T = len(ab) - 1
  x0 = levels / (L - 1) * 2 - 1
  d = x0[0].size
  prior = _gaussian_kl(np.sqrt(ab[T]) * x0, 1 - ab[T], 0.0, 1.0).reshape(len(x0), -1).sum(1)
  diff = np.zeros(len(x0))
  for t in range(2, T + 1):
    c0, _, var = _posterior(ab, betas, t)
    diff += _gaussian_kl(c0 * x0, var, c0 * m, var).reshape(len(x0), -1).sum(1)
  rec = -np.log(_bin_mass(*_bin_edges(levels), m, np.sqrt(betas[1])))
  rec = rec.reshape(len(x0), -1).sum(1)
  return {k: v / (d * np.log(2)) for k, v in
          {"prior": prior, "diffusion": diff, "reconstruction": rec}.items()}


def test_bound_terms_match_float64_reference_for_a_constant_x0_model():
  schedule = make_schedule("linear", 5)
  levels = np.array([[8, 9, 7], [0, 16, 8]])
  m = 0.05
  terms = vlb_terms(_constant_x0_eps(schedule, m), None, schedule, jnp.asarray(levels),
                    jnp.zeros(2, jnp.int32), jax.random.key(0), L)
  ref = _reference_constant_x0_terms(levels, m, schedule)
  for k in ref:
    np.testing.assert_allclose(np.asarray(terms[k]), ref[k], rtol=2e-4, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(np.asarray(terms["total"]),
                             sum(np.asarray(terms[k]) for k in ref), rtol=1e-6)


def test_bound_terms_match_closed_form_expectations_for_eps_linear_in_x():
  """eps_hat = c x_t on 2-pixel data, T = 4: each term's mean over many draws of the forward
  noise matches its exact expectation (closed-form KLs; quadrature for the decoder)."""
  c, T, n = 0.9, 4, 20000
  schedule = make_schedule("cosine", T)
  ab, betas = _float64(schedule)
  examples = np.array([[8, 13], [0, 16]])
  levels = np.repeat(examples, n, axis=0)
  eps_fn = lambda params, x, t, y: c * x  # noqa: E731
  terms = {k: np.asarray(v, np.float64).reshape(2, n) for k, v in vlb_terms(
      eps_fn, None, schedule, jnp.asarray(levels), jnp.zeros(2 * n, jnp.int32),
      jax.random.key(1), L).items()}

  x0 = examples / (L - 1) * 2 - 1
  gain = lambda t: (1 - c * np.sqrt(1 - ab[t])) / np.sqrt(ab[t])  # noqa: E731  x0_hat = gain x_t
  to_bits = 1 / (2 * np.log(2))
  prior = _gaussian_kl(np.sqrt(ab[T]) * x0, 1 - ab[T], 0.0, 1.0).sum(1) * to_bits
  diffusion = np.zeros(2)
  for t in range(2, T + 1):
    # mu_q - mu_p = c0 (x0 - gain x_t); x_t = sqrt(ab) x0 + sqrt(1-ab) e: E[(.)^2] closed form.
    c0, _, var = _posterior(ab, betas, t)
    g = gain(t)
    gap2 = c0**2 * (x0**2 * (1 - g * np.sqrt(ab[t])) ** 2 + g**2 * (1 - ab[t]))
    diffusion += (gap2 / (2 * var)).sum(1) * to_bits
  nodes, weights = np.polynomial.hermite_e.hermegauss(60)  # E over e ~ N(0, 1)
  weights = weights / weights.sum()
  x1 = np.sqrt(ab[1]) * x0[..., None] + np.sqrt(1 - ab[1]) * nodes  # [2, 2, nodes]
  lo, hi = _bin_edges(examples[..., None])
  nll = -np.log(_bin_mass(lo, hi, gain(1) * x1, np.sqrt(betas[1])))
  reconstruction = (nll @ weights).sum(1) * to_bits

  np.testing.assert_allclose(terms["prior"][:, 0], prior, rtol=1e-4, atol=1e-7)
  for name, ref in (("diffusion", diffusion), ("reconstruction", reconstruction)):
    got, se = terms[name].mean(1), terms[name].std(1) / np.sqrt(n)
    assert np.all(np.abs(got - ref) < 4.5 * se + 1e-6 * np.abs(ref)), (name, got, ref, se)
  np.testing.assert_allclose(
      terms["total"], terms["prior"] + terms["diffusion"] + terms["reconstruction"], rtol=1e-6)


def test_monte_carlo_timestep_estimate_is_unbiased():
  schedule = make_schedule("cosine", 20)
  levels = jnp.asarray([[3, 12, 8, 16]])
  eps_fn = _constant_x0_eps(schedule, -0.2)
  y = jnp.zeros(1, jnp.int32)
  exact = float(vlb_terms(eps_fn, None, schedule, levels, y, jax.random.key(0), L)["diffusion"][0])
  n = 20000  # n copies of the example, each with its own K = 3 timesteps
  est = vlb_terms(eps_fn, None, schedule, jnp.repeat(levels, n, 0), jnp.zeros(n, jnp.int32),
                  jax.random.key(1), L, num_t_samples=3)["diffusion"]
  est = np.asarray(est, np.float64)
  assert est.std() > 0.1 * exact  # it really is a random estimate
  assert abs(est.mean() - exact) < 4 * est.std() / np.sqrt(n)


def test_point_mass_with_its_exact_eps_has_a_nonnegative_tiny_bound():
  """For data that is a point mass at m, -log2 P(m) = 0, so 0 <= bound; with the exact eps
  every diffusion KL vanishes and the bound is the prior plus decoder mass outside m's bin."""
  schedule = make_schedule("cosine", 1000)
  levels = np.array([[[[0], [16]], [[5], [11]]]])  # one 2x2 image
  m = jnp.asarray(levels / (L - 1) * 2 - 1, jnp.float32)
  terms = vlb_terms(_constant_x0_eps(schedule, m), None, schedule, jnp.asarray(levels),
                    jnp.zeros(1, jnp.int32), jax.random.key(0), L)
  ref = _reference_constant_x0_terms(levels, np.asarray(m, np.float64), schedule)
  assert float(terms["diffusion"][0]) < 1e-9
  for k in ("prior", "reconstruction"):
    np.testing.assert_allclose(float(terms[k][0]), ref[k][0], rtol=1e-3, atol=1e-12)
  assert 0 <= float(terms["total"][0]) < 1e-6


def _wiggly_eps(c, x, t, y):
  """An arbitrary (wrong) model; its parameter c scales the linear part."""
  return c * x + 0.3 * jnp.sin(5 * x)


@pytest.mark.parametrize("num_t_samples", [None, 2])
def test_every_term_is_nonnegative_for_arbitrary_models(num_t_samples):
  """KLs and -log P of a discrete decoder are >= 0 sample by sample, so is the bound."""
  schedule = make_schedule("linear", 50)
  levels = jnp.asarray(np.random.default_rng(0).integers(0, L, (64, 3, 3, 1)))
  for i, c in enumerate((-2.0, 0.0, 0.7, 3.0)):
    terms = vlb_terms(_wiggly_eps, jnp.float32(c), schedule, levels, jnp.zeros(64, jnp.int32),
                      jax.random.key(i), L, num_t_samples=num_t_samples)
    for k, v in terms.items():
      assert np.all(np.asarray(v) >= 0), (c, k)


def _two_point_mixture_eps(schedule, a, b):
  """Exact eps for data = a or b with probability 1/2 each: E[x0 | x_t] by Bayes."""
  def eps_fn(params, x, t, y):
    ab = schedule.alpha_bar_at(t).reshape((-1,) + (1,) * (x.ndim - 1))
    d2 = lambda c: jnp.sum((x - jnp.sqrt(ab) * c) ** 2, axis=tuple(range(1, x.ndim)))  # noqa: E731
    w_a = jax.nn.sigmoid((d2(b) - d2(a)) / (2 * (1 - ab.reshape(-1))))
    w_a = w_a.reshape(ab.shape)
    x0 = w_a * a + (1 - w_a) * b
    return (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)
  return eps_fn


def test_bound_of_the_exact_model_of_a_two_point_mixture_is_at_least_one_bit():
  """Data: one of two level configurations, each with probability 1/2, so -log2 P(x) = 1 bit
  per image. The expected bound with the exact eps must be >= 1 bit (it is an upper bound on
  the true NLL) and, with T = 1000, close to it."""
  schedule = make_schedule("cosine", 1000)
  a_lv, b_lv = np.array([2, 9, 14, 6]), np.array([13, 4, 1, 10])
  a, b = (jnp.asarray(v / (L - 1) * 2 - 1, jnp.float32) for v in (a_lv, b_lv))
  n = 256
  levels = jnp.asarray(np.stack([a_lv, b_lv] * (n // 2)))
  terms = vlb_terms(_two_point_mixture_eps(schedule, a, b), None, schedule, levels,
                    jnp.zeros(n, jnp.int32), jax.random.key(0), L)
  bits = np.asarray(terms["total"], np.float64) * a_lv.size  # bits per image
  mean, se = bits.mean(), bits.std() / np.sqrt(n)
  assert mean > 1.0 - 4 * se
  assert mean < 1.1


class _ConstantX0(nn.Module):
  m: float

  @nn.compact
  def __call__(self, x, t, y, train=False):
    return jnp.full_like(x, self.m)


def test_bpd_averages_over_batches_with_padding():
  """bpd of a GaussianDiffusion (x0 target, constant prediction) over 7 images in batches of
  3 equals the mean of the float64 reference terms; labels=None uses the null label."""
  process = GaussianDiffusion(_ConstantX0(0.05), num_classes=10, schedule_name="linear",
                              num_timesteps=5, target="x0")
  levels = np.random.default_rng(0).integers(0, L, (7, 2, 2, 1)).astype(np.uint8)
  out = bpd(process, {}, levels, None, L, jax.random.key(0), batch_size=3)
  ref = _reference_constant_x0_terms(levels.astype(np.int64), 0.05, process.schedule)
  for k in ref:
    np.testing.assert_allclose(out[k], ref[k].mean(), rtol=2e-4, err_msg=k)
  np.testing.assert_allclose(out["total"], sum(ref[k].mean() for k in ref), rtol=2e-4)
  with pytest.raises(ValueError, match="labels"):
    bpd(process, {}, levels, np.zeros(3), L, jax.random.key(0))


def test_bad_arguments_are_value_errors():
  schedule = make_schedule("linear", 5)
  eps_fn = _constant_x0_eps(schedule, 0.0)
  y = jnp.zeros(1, jnp.int32)
  with pytest.raises(ValueError, match="levels"):
    vlb_terms(eps_fn, None, schedule, jnp.asarray([[17, 0]]), y, jax.random.key(0), L)
  with pytest.raises(ValueError, match="levels"):
    vlb_terms(eps_fn, None, schedule, jnp.asarray([[0.5, 0.0]]), y, jax.random.key(0), L)
  with pytest.raises(ValueError, match="num_t_samples"):
    vlb_terms(eps_fn, None, schedule, jnp.asarray([[1, 0]]), y, jax.random.key(0), L,
              num_t_samples=0)
