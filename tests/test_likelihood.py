"""The diffusion bound against an independent float64 computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from ardiff.diffusion.likelihood import _vlb_jit, discretized_gaussian_log_probs, vlb_terms
from ardiff.diffusion.schedules import make_schedule

L = 17


@pytest.mark.parametrize("mean,std", [(0.0, 0.1), (0.93, 0.01), (-1.4, 0.3), (3.0, 0.05),
                                      (0.2, 1e-4), (0.0, 5.0)])
def test_decoder_probabilities_sum_to_one_and_match_scipy(mean, std):
  logp = np.asarray(discretized_gaussian_log_probs(jnp.float32(mean), jnp.float32(std), L),
                    np.float64)
  np.testing.assert_allclose(np.exp(logp).sum(), 1.0, atol=1e-5)
  centres = np.linspace(-1, 1, L)
  hi = np.append(centres[:-1] + 1 / (L - 1), np.inf)
  lo = np.insert(centres[1:] - 1 / (L - 1), 0, -np.inf)
  ref = norm.cdf(hi, mean, std) - norm.cdf(lo, mean, std)
  np.testing.assert_allclose(np.exp(logp), ref, atol=2e-6)


def _constant_x0_eps(schedule, m):
  """An eps_fn whose implied x0 prediction is the constant m: terms become deterministic."""
  def eps_fn(params, x, t, y):
    ab = schedule.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
    return (x - jnp.sqrt(ab) * m) / jnp.sqrt(1 - ab)
  return eps_fn


def _reference_terms(levels, m, schedule):
  """Independent float64 computation of the three terms (bits per dimension)."""
  ab = np.asarray(schedule.alpha_bars, np.float64)
  betas = np.asarray(schedule.betas, np.float64)
  T = len(ab) - 1
  x0 = levels / (L - 1) * 2 - 1
  d = x0.shape[1]
  prior = 0.5 * np.sum(ab[T] * x0**2 + (1 - ab[T]) - 1 - np.log(1 - ab[T]), 1)
  diff = np.zeros(len(x0))
  for t in range(2, T + 1):
    # q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, var); the model mean swaps x0 for m.
    c0 = np.sqrt(ab[t - 1]) * betas[t] / (1 - ab[t])
    var = (1 - ab[t - 1]) / (1 - ab[t]) * betas[t]
    diff += np.sum(c0**2 * (x0 - m) ** 2 / (2 * var), 1)
  half, sd = 1 / (L - 1), np.sqrt(betas[1])
  hi = np.where(levels == L - 1, np.inf, x0 + half)
  lo = np.where(levels == 0, -np.inf, x0 - half)
  rec = -np.sum(np.log(norm.cdf(hi, m, sd) - norm.cdf(lo, m, sd)), 1)
  return {k: v / (d * np.log(2)) for k, v in
          {"prior": prior, "diffusion": diff, "reconstruction": rec}.items()}


def test_bound_terms_match_independent_float64_computation():
  schedule = make_schedule("linear", 5)
  levels = np.array([[8, 9, 7], [0, 16, 8]])
  m = 0.05
  terms = vlb_terms(_constant_x0_eps(schedule, m), None, schedule, jnp.asarray(levels),
                    jnp.zeros(2, jnp.int32), jax.random.key(0), L)
  ref = _reference_terms(levels, m, schedule)
  for k in ref:
    np.testing.assert_allclose(np.asarray(terms[k]), ref[k], rtol=2e-4, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(np.asarray(terms["total"]),
                             sum(np.asarray(terms[k]) for k in ref), rtol=1e-6)
  assert np.all(np.asarray(terms["total"]) >= 0)  # it bounds -log2 P of a discrete variable


def test_monte_carlo_timestep_estimate_is_unbiased():
  schedule = make_schedule("cosine", 20)
  levels = jnp.asarray([[3, 12, 8, 16]])
  eps_fn = _constant_x0_eps(schedule, -0.2)
  exact = float(vlb_terms(eps_fn, None, schedule, levels, jnp.zeros(1, jnp.int32),
                          jax.random.key(0), L)["diffusion"][0])
  estimates = [float(_vlb_jit(eps_fn, None, schedule, levels, jnp.zeros(1, jnp.int32),
                              jax.random.key(s), L, 3)["diffusion"][0]) for s in range(300)]
  se = np.std(estimates) / np.sqrt(len(estimates))
  assert abs(np.mean(estimates) - exact) < 4 * se + 1e-6
  assert np.std(estimates) > 0  # it really is a random estimate
