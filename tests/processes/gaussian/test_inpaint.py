"""Completion keeps the known pixels, and samples exactly what replacement should sample.

The Gaussian reference: for two correlated pixels with the exact eps, every sampler step and
every replacement is linear-Gaussian, so the distribution of the completed pixel is computed
exactly by propagating its mean and covariance in float64 (written here from the formulas,
not from the library). The samples must match that, and the test also measures, and bounds,
how far replacement is from the true conditional.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.processes import guidance
from ardiff.processes.guidance import Guidance
from ardiff.processes.gaussian.inpaint import inpaint
from ardiff.processes.gaussian.schedules import make_schedule

SCHEDULE = make_schedule("cosine", 200)
# The references visit the integer training grid from t = T, as the papers' samplers do.
ON_TRAINING_GRID = {"spacing": "trailing", "sigma_max": float("inf")}
RHO, VAR, KNOWN = 0.9, 0.25, 0.8
COV = VAR * np.array([[1.0, RHO], [RHO, 1.0]])


def correlated_eps(params, x, t, cond):
  """Exact eps for x0 ~ N(0, COV) on a [B, 1, 2, 1] image (two correlated pixels)."""
  ab = SCHEDULE.alpha_bar_at(t)[:, None, None]
  cov_t = ab * jnp.asarray(COV, jnp.float32) + (1 - ab) * jnp.eye(2)
  flat = x.reshape(x.shape[0], 2)
  eps = jnp.sqrt(1 - ab[:, :, 0]) * jnp.linalg.solve(cov_t, flat[..., None])[..., 0]
  return eps.reshape(x.shape)


def _shrink_eps(params, x, t, cond):
  """A label-dependent closed-form eps (the guided test needs cond to matter)."""
  return (0.5 + 0.1 * cond.astype(x.dtype)).reshape((-1,) + (1,) * (x.ndim - 1)) * x


def strided_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """`num_steps + 1` decreasing integer timesteps from T to 0, as evenly spaced as possible
  (the references' grid: the samplers' 'trailing' spacing from sigma_max = inf)."""
  if not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= num_timesteps:
    raise ValueError(
        f"num_steps must be an integer in 1..T={num_timesteps}, got {num_steps!r}")
  ts = np.round(np.linspace(num_timesteps, 0, num_steps + 1)).astype(np.int32)
  assert np.all(np.diff(ts) < 0), ts  # distinct because num_steps <= T
  return ts


def test_strided_timesteps():
  ts = strided_timesteps(1000, 4)
  np.testing.assert_array_equal(ts, [1000, 750, 500, 250, 0])
  assert len(strided_timesteps(1000, 1000)) == 1001
  with pytest.raises(ValueError, match="num_steps"):
    strided_timesteps(1000, 1001)
  with pytest.raises(ValueError, match="num_steps"):
    strided_timesteps(1000, 0)


def replacement_moments(sampler: str, num_steps: int):
  """Exact mean and std of pixel 2 after completion by replacement (float64 propagation)."""
  ab = np.asarray(SCHEDULE.alpha_bars, np.float64)
  ts = strided_timesteps(SCHEDULE.num_timesteps, num_steps)
  mean = np.array([np.sqrt(ab[ts[0]]) * KNOWN, 0.0])
  cov = np.diag([1 - ab[ts[0]], 1.0])
  for t, s in zip(ts[:-1], ts[1:]):
    # E[x0 | x_t] = sqrt(ab_t) COV (ab_t COV + (1 - ab_t) I)^{-1} x_t  =: X x_t
    x0_map = np.sqrt(ab[t]) * COV @ np.linalg.inv(ab[t] * COV + (1 - ab[t]) * np.eye(2))
    eps_map = (np.eye(2) - np.sqrt(ab[t]) * x0_map) / np.sqrt(1 - ab[t])
    if sampler == "ddpm":  # posterior q(x_s | x_t, x0) with x0 -> X x_t
      a_ts = ab[t] / ab[s]
      step = (np.sqrt(ab[s]) * (1 - a_ts) / (1 - ab[t]) * x0_map
              + np.sqrt(a_ts) * (1 - ab[s]) / (1 - ab[t]) * np.eye(2))
      noise = (1 - ab[s]) / (1 - ab[t]) * (1 - a_ts)
    else:  # deterministic DDIM
      step, noise = np.sqrt(ab[s]) * x0_map + np.sqrt(1 - ab[s]) * eps_map, 0.0
    mean, cov = step @ mean, step @ cov @ step.T + noise * np.eye(2)
    mean[0], cov[0, :], cov[:, 0] = np.sqrt(ab[s]) * KNOWN, 0.0, 0.0  # replacement
    cov[0, 0] = 1 - ab[s]
  return mean[1], np.sqrt(cov[1, 1])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_known_pixels_never_change(sampler):
  x_known = jax.random.uniform(jax.random.key(0), (8, 4, 4, 1), minval=-1, maxval=1)
  mask = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.5, (8, 4, 4, 1)))
  out, traj = inpaint(_shrink_eps, None, SCHEDULE, x_known, mask, jax.random.key(2),
                      jnp.zeros(8, jnp.int32), sampler=sampler, num_steps=20,
                      return_trajectory=True)
  out, traj, x_known = np.asarray(out), np.asarray(traj), np.asarray(x_known)
  np.testing.assert_array_equal(out[mask], x_known[mask])
  assert traj.shape == (20, 8, 4, 4, 1)
  np.testing.assert_array_equal(traj[-1], out)  # the s = 0 replacement is x_known itself
  assert np.all(np.isfinite(out)) and not np.allclose(out[~mask], x_known[~mask])


def test_guided_completion_with_a_shared_mask():
  """guidance.guided's eps_fn and cond dict work as is; a [H, W, C] mask broadcasts."""
  x_known = jnp.linspace(-1, 1, 3 * 16).reshape(3, 4, 4, 1)
  mask = np.zeros((4, 4, 1), bool)
  mask[:2] = True
  cond = guidance.guidance_cond(jnp.array([1, 2, 3]), Guidance(2.0), 0)
  out = np.asarray(inpaint(guidance.guided(_shrink_eps), None, SCHEDULE, x_known, mask,
                           jax.random.key(0), cond, sampler="ddim", num_steps=10, eta=1.0))
  np.testing.assert_array_equal(out[:, :2], np.asarray(x_known)[:, :2])
  assert np.all(np.isfinite(out[:, 2:]))


def test_bad_arguments_are_value_errors():
  x = jnp.zeros((2, 4, 4, 1))
  with pytest.raises(ValueError, match="mask"):
    inpaint(_shrink_eps, None, SCHEDULE, x, np.ones((3, 4, 1), bool), jax.random.key(0))
  with pytest.raises(ValueError, match="mask"):
    inpaint(_shrink_eps, None, SCHEDULE, x, np.ones((4, 4, 1)), jax.random.key(0))
  with pytest.raises(ValueError, match="num_steps"):
    inpaint(_shrink_eps, None, SCHEDULE, x, np.ones((4, 4, 1), bool), jax.random.key(0),
            num_steps=0)
  with pytest.raises(ValueError, match="trailing.*200 training timesteps.*500"):
    inpaint(_shrink_eps, None, SCHEDULE, x, np.ones((4, 4, 1), bool), jax.random.key(0),
            num_steps=500, **ON_TRAINING_GRID)
  with pytest.raises(ValueError, match="sampler"):
    inpaint(_shrink_eps, None, SCHEDULE, x, np.ones((4, 4, 1), bool), jax.random.key(0),
            sampler="euler")


@pytest.mark.parametrize("sampler,num_steps", [("ddpm", 200), ("ddim", 50)])
def test_correlated_gaussian_completion_matches_exact_replacement_moments(sampler, num_steps):
  n = 4000
  x_known = jnp.zeros((n, 1, 2, 1)).at[:, 0, 0, 0].set(KNOWN)
  mask = np.array([True, False]).reshape(1, 2, 1)
  out = np.asarray(inpaint(correlated_eps, None, SCHEDULE, x_known, mask, jax.random.key(3),
                           sampler=sampler, num_steps=num_steps, **ON_TRAINING_GRID),
                   np.float64)[:, 0, 1, 0]
  mean, std = replacement_moments(sampler, num_steps)
  assert abs(out.mean() - mean) < 4 * std / np.sqrt(n)  # 4 standard errors
  assert abs(out.std() / std - 1) < 4 / np.sqrt(2 * n)  # ~4 standard errors of a std


def test_replacement_bias_against_the_true_conditional():
  """Replacement vs the true conditional N(RHO KNOWN, VAR (1 - RHO^2)) = N(0.72, 0.218^2).

  Exact (propagated) output moments, the numbers quoted in inpaint.py's docstring, and the
  moments of inpaint()'s own samples against both. The bias
  is real and toward the prior: bound it loosely but meaningfully. The completion conditions
  clearly (at least 45% of the way from the prior mean 0 to the conditional mean; ignoring
  the known pixel would give 0) but never overshoots, and it is wider than the conditional
  by less than half of its std.
  """
  cond_mean, cond_std = RHO * KNOWN, np.sqrt(VAR * (1 - RHO**2))
  documented = {("ddpm", 200): (0.497, 0.273), ("ddim", 50): (0.362, 0.316)}
  n = 20_000
  x_known = jnp.zeros((n, 1, 2, 1)).at[:, 0, 0, 0].set(KNOWN)
  mask = np.array([True, False]).reshape(1, 2, 1)
  for (sampler, num_steps), (doc_mean, doc_std) in documented.items():
    mean, std = replacement_moments(sampler, num_steps)
    assert (round(mean, 3), round(std, 3)) == (doc_mean, doc_std), (sampler, mean, std)
    assert 0.45 * cond_mean < mean < cond_mean
    assert cond_std < std < 1.5 * cond_std
    # The library's inpaint() itself: its samples have the pinned (biased) moments, within
    # 4 standard errors, and are many standard errors away from the true conditional.
    out = np.asarray(inpaint(correlated_eps, None, SCHEDULE, x_known, mask, jax.random.key(7),
                             sampler=sampler, num_steps=num_steps, **ON_TRAINING_GRID),
                     np.float64)[:, 0, 1, 0]
    se_mean, se_std = doc_std / np.sqrt(n), doc_std / np.sqrt(2 * n)
    assert abs(out.mean() - doc_mean) < 4 * se_mean + 5e-4, (sampler, out.mean(), doc_mean)
    assert abs(out.std() - doc_std) < 4 * se_std + 5e-4, (sampler, out.std(), doc_std)
    assert cond_mean - out.mean() > 20 * se_mean  # the bias is real, not sampling noise
    assert out.std() - cond_std > 20 * se_std
