"""A seeded family of Gaussian mixtures with exact eps and exact probability-flow references:
the closed forms the solvers' defaults are chosen on (`tools/solver_table.py`,
docs/solvers.md) and held to (`test_solvers.py`).

Eight mixtures, 1-D to 16-D, 1 to 8 components with diagonal covariances (widths 0.05 to 1),
means up to 5 from the origin; each appears twice, as drawn ("raw") and standardised per
dimension by its exact mean and std, as `GaussianProcess` standardises points. Every member is
padded to PAD_K components and PAD_D dimensions so that one eps function (one compiled sampler
per solver) serves the whole family: a padded component has weight 0, a padded dimension has
mean 0 and std 1 in every component, so it multiplies every component's likelihood by the same
factor (the responsibilities, hence the real dimensions, are unchanged) and evolves as an
independent N(0, 1) coordinate. Errors are read on the real dimensions only.

References: the flow of each start point from t = 1 (the schedule's sigma_at(1) = 2e4, the
noise a sampler's x_init stands for) to sigma = 0, integrated in log sigma by scipy's DOP853 in
float64 (dx~/dlog sigma = x~ - D(x~, sigma) with the exact denoiser D). A sampler that starts
at sigma_max < 2e4 is then charged for its prior mismatch too (x_T ~ N(0, I) there is not the
marginal), so sigma_max is compared fairly with the spacings.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from ardiff.processes.gaussian.schedules import make_schedule

SCHEDULE = make_schedule("cosine", 1000)
PAD_K, PAD_D = 8, 16
DIMS = (1, 2, 2, 3, 4, 8, 12, 16)
COMPONENTS = (3, 1, 8, 2, 5, 4, 6, 3)
BATCH = 64  # start points per member
SIGMA_END = 1e-5  # the reference stops here: a width-0.05 component moves ~1e-8 below it


class Member(NamedTuple):
  name: str
  dim: int
  means: np.ndarray  # [PAD_K, PAD_D]
  stds: np.ndarray  # [PAD_K, PAD_D]
  log_weights: np.ndarray  # [PAD_K], -inf for padding
  scale: float  # the data's mean per-dimension std (errors are divided by it)


def _moments(means, stds, weights):
  mean = weights @ means
  second = weights @ (stds**2 + means**2)
  return mean, np.sqrt(second - mean**2)


def _padded(name, means, stds, weights, scale) -> Member:
  k, d = means.shape
  pad_m, pad_s = np.zeros((PAD_K, PAD_D)), np.ones((PAD_K, PAD_D))
  pad_m[:k, :d], pad_s[:k, :d] = means, stds
  log_w = np.full(PAD_K, -np.inf)
  log_w[:k] = np.log(weights)
  return Member(name, d, pad_m, pad_s, log_w, scale)


@functools.lru_cache(maxsize=None)
def family(seed: int = 0) -> tuple[Member, ...]:
  """The 16 members: each drawn mixture raw, then standardised."""
  rng = np.random.default_rng(seed)
  members = []
  for i, (d, k) in enumerate(zip(DIMS, COMPONENTS)):
    direction = rng.normal(size=(k, d))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    means = direction * rng.uniform(0.0, 5.0, (k, 1))
    stds = np.exp(rng.uniform(np.log(0.05), 0.0, (k, d)))
    weights = rng.dirichlet(np.full(k, 2.0))
    mean, std = _moments(means, stds, weights)
    tag = f"{d}d{k}k"
    members.append(_padded(f"{tag} raw", means, stds, weights, float(std.mean())))
    members.append(_padded(f"{tag} std", (means - mean) / std, stds / std, weights, 1.0))
  return tuple(members)


def params(dtype=jnp.float32) -> dict:
  """Every member's mixture, stacked [M, ...]; an example's member is its `cond` entry."""
  members = family()
  return {"means": jnp.asarray(np.stack([m.means for m in members]), dtype),
          "stds": jnp.asarray(np.stack([m.stds for m in members]), dtype),
          "log_weights": jnp.asarray(np.stack([m.log_weights for m in members]), dtype)}


def member_ids() -> jax.Array:
  """The `cond` of the family's batch: member i owns rows i * BATCH ... (i + 1) * BATCH - 1."""
  return jnp.repeat(jnp.arange(len(family()), dtype=jnp.int32), BATCH)


def _posterior_mean(x, a2, v, means, stds, log_weights, xp):
  """E[x0 | x_t = x] for a diagonal mixture: x [B, D], means and stds [B or 1, K, D],
  log_weights [B or 1, K]; a2 = ab and v = 1 - ab broadcastable to [B, 1, 1] (VP state), or
  a2 = 1, v = sigma^2 (scaled state)."""
  a = xp.sqrt(a2)
  var = a2 * stds**2 + v  # [B, K, D]
  resid = x[:, None, :] - a * means
  logits = log_weights - 0.5 * xp.sum(resid**2 / var + xp.log(var), -1)  # [B, K]
  r = xp.exp(logits - xp.max(logits, -1, keepdims=True))
  r = r / xp.sum(r, -1, keepdims=True)
  return xp.sum(r[..., None] * (means + a * stds**2 / var * resid), 1)


def eps(p, x, t, cond):
  """Exact E[eps | x_t] at real times t [B], example b from member cond[b] (the sampler's
  model function; `params()` and `member_ids()` give p and cond)."""
  ab = SCHEDULE.alpha_bar_at(t).astype(x.dtype)[:, None, None]
  x0 = _posterior_mean(x, ab, 1 - ab, p["means"][cond], p["stds"][cond],
                       p["log_weights"][cond], jnp)
  return (x - jnp.sqrt(ab[:, 0]) * x0) / jnp.sqrt(1 - ab[:, 0])


def start_points(seed: int = 0) -> jax.Array:
  """x_init for the whole family [M * BATCH, PAD_D], standard normal."""
  return jax.random.normal(jax.random.key(seed), (len(family()) * BATCH, PAD_D))


def sigma_top() -> float:
  return float(SCHEDULE.sigma_at(1.0))


_REFERENCES: dict[tuple[str, int], np.ndarray] = {}


def reference(member: Member, seed: int = 0) -> np.ndarray:
  """The exact flow of `start_points(seed)` from t = 1 to sigma = 0, real dims [BATCH, dim]
  (computed once per member and seed)."""
  if (member.name, seed) not in _REFERENCES:
    _REFERENCES[member.name, seed] = _flow(member, seed)
  return _REFERENCES[member.name, seed]


def _flow(member: Member, seed: int) -> np.ndarray:
  d = member.dim
  means, stds = member.means[:, :d], member.stds[:, :d]
  sig0 = sigma_top()
  index = [m.name for m in family()].index(member.name)
  rows = slice(index * BATCH, (index + 1) * BATCH)
  x = np.asarray(start_points(seed), np.float64)[rows, :d] * np.sqrt(1 + sig0**2)

  def rhs(log_sigma, flat):
    xs = flat.reshape(-1, d)
    denoised = _posterior_mean(xs, 1.0, np.exp(2 * log_sigma), means[None], stds[None],
                               member.log_weights[None], np)
    return (xs - denoised).ravel()

  sol = solve_ivp(rhs, (np.log(sig0), np.log(SIGMA_END)), x.ravel(), method="DOP853",
                  rtol=1e-9, atol=1e-9)
  assert sol.success, sol.message
  return sol.y[:, -1].reshape(-1, d)


def errors(out, seed: int = 0) -> np.ndarray:
  """Each member's mean absolute error on its real dimensions, in units of its data's std
  ([M]; `out` is a sample of the whole family's batch)."""
  out = np.asarray(out, np.float64)
  return np.array([np.abs(out[i * BATCH:(i + 1) * BATCH, :m.dim] - reference(m, seed)).mean()
                   / m.scale for i, m in enumerate(family())])
