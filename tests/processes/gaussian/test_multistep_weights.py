"""The multistep solvers' weights against float64 transcriptions of their papers, on grids whose
log-SNR steps vary (r_k != 1 and r0 != r1), where a swapped or inverted step ratio changes the
result: DPM-Solver++(3M) (Lu et al., 2022) and UniPC (Zhao et al., 2023) with both B(h) and
orders 1-3. (2M's transcription, in float32: test_solvers.py.)

The library runs in float64 here (jax_enable_x64 for this module, a float64 schedule), so the
two sides agree to rounding (measured ~1e-13) and the tolerance can be 1e-9. The transcriptions
are written in the VP state x = sqrt(ab) x0 + sqrt(1 - ab) eps with the papers' alpha, sigma
and lambda = log(alpha / sigma), in numpy, with the exact data prediction of a 2-D Gaussian.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.processes.gaussian import samplers
from ardiff.processes.gaussian.schedules import make_schedule
from tests._float64 import float64

MU = np.array([1.0, -0.5])
COV = np.array([[0.5, 0.2], [0.2, 0.3]])
TOL = 1e-9


@pytest.fixture(scope="module", autouse=True)
def _x64():
  with float64():
    yield


@pytest.fixture(scope="module")
def schedule(_x64):
  return make_schedule("cosine", 1000, dtype=jnp.float64)


def gaussian_eps(params, x, t, cond):
  ab = params["schedule"].alpha_bar_at(t)[:, None, None]
  cov = ab * params["cov"] + (1 - ab) * jnp.eye(2)
  resid = x - jnp.sqrt(ab[:, :, 0]) * params["mu"]
  return jnp.sqrt(1 - ab[:, :, 0]) * jnp.linalg.solve(cov, resid[..., None])[..., 0]


class _Paper:
  """A grid's alpha, sigma (VP) and lambda in float64, and the Gaussian's data prediction."""

  def __init__(self, schedule, times):
    edm_sigma = np.asarray(schedule.sigma_at(jnp.asarray(times)), np.float64)
    self.alpha = 1 / np.sqrt(1 + edm_sigma**2)
    self.sigma = edm_sigma * self.alpha
    with np.errstate(divide="ignore"):
      self.lam = np.log(self.alpha) - np.log(self.sigma)  # +inf at the last time

  def data_pred(self, x, i):
    a, s = self.alpha[i], self.sigma[i]
    gain = a * COV @ np.linalg.inv(a**2 * COV + s**2 * np.eye(2))
    return MU + (x - a * MU) @ gain.T


def _dpmpp_3m_reference(paper, x, n):
  """Lu et al. (2022), multistep DPM-Solver++ of order 3 (orders 1, 2 while the history
  fills; the last step, to sigma = 0, first order: x_0 = the data prediction)."""
  models, lams = [], []
  for i in range(n):
    m0 = paper.data_pred(x, i)
    models.append(m0)
    lams.append(paper.lam[i])
    if paper.sigma[i + 1] == 0:
      return m0
    h = paper.lam[i + 1] - paper.lam[i]
    phi_1 = np.expm1(-h)
    phi_2 = phi_1 / h + 1.0
    phi_3 = phi_2 / h - 0.5
    x_next = paper.sigma[i + 1] / paper.sigma[i] * x - paper.alpha[i + 1] * phi_1 * m0
    if i == 1:
      d1 = (m0 - models[-2]) / ((lams[-1] - lams[-2]) / h)
      x_next = x_next - 0.5 * paper.alpha[i + 1] * phi_1 * d1
    elif i >= 2:
      r0, r1 = (lams[-1] - lams[-2]) / h, (lams[-2] - lams[-3]) / h
      d1_0, d1_1 = (m0 - models[-2]) / r0, (models[-2] - models[-3]) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = (d1_0 - d1_1) / (r0 + r1)
      x_next = x_next + paper.alpha[i + 1] * (phi_2 * d1 - phi_3 * d2)
    x = x_next
  return x


def _unipc_weights(h, nodes, bh, order, corrector):
  """a_k of UniP / UniC: R a = g / B with R the Vandermonde matrix of the nodes and
  g_i = (-h) phi_{i+1}(-h) i!; 1/2 for UniP-2 and UniC-1 (the paper's code)."""
  if (order == 2 and not corrector) or (order == 1 and corrector):
    return np.array([0.5])
  x = -h
  big_b = x if bh == 1 else np.expm1(x)
  phi = [None, np.expm1(x) / x]  # phi_1
  for k in range(1, order + 1):
    phi.append((phi[k] - 1 / math.factorial(k)) / x)
  size = len(nodes)
  g = np.array([x * phi[i + 1] * math.factorial(i) for i in range(1, size + 1)])
  vander = np.array([[r**row for r in nodes] for row in range(size)])
  return np.linalg.solve(vander, g / big_b)


def _unipc_update(paper, x, models, lams, i_from, i_to, bh, order, m_new=None):
  """One UniP step (m_new None) or UniC correction from time index i_from to i_to, with the
  outputs `models` at `lams` (the last is at i_from)."""
  h = paper.lam[i_to] - paper.lam[i_from]
  m0 = models[-1]
  nodes = [(lams[-1 - k] - lams[-1]) / h for k in range(1, order)]
  diffs = [(models[-1 - k] - m0) / r for k, r in zip(range(1, order), nodes)]
  if m_new is not None:
    nodes.append(1.0)
    diffs.append(m_new - m0)
  res = 0.0
  if order > 1 or m_new is not None:
    weights = _unipc_weights(h, nodes if m_new is not None else nodes, bh, order,
                             m_new is not None)
    res = sum(w * d for w, d in zip(weights, diffs))
  big_b = -h if bh == 1 else np.expm1(-h)
  return (paper.sigma[i_to] / paper.sigma[i_from] * x
          - paper.alpha[i_to] * np.expm1(-h) * m0 - paper.alpha[i_to] * big_b * res)


def _unipc_reference(paper, x, n, bh, order):
  """UniPC-order with B(h) = bh: predict, evaluate at the prediction, correct the prediction
  with that evaluation (no extra call), predict again; orders min(order, step + 1, steps
  left); the step to sigma = 0 returns the data prediction."""
  models, lams, prev = [], [], None
  for i in range(n):
    m = paper.data_pred(x, i)
    if prev is not None:
      x_prev, prev_order = prev
      x = _unipc_update(paper, x_prev, models, lams, i - 1, i, bh, prev_order, m_new=m)
    models.append(m)
    lams.append(paper.lam[i])
    if paper.sigma[i + 1] == 0:
      return m
    step_order = min(order, i + 1, n - i)
    prev = (x, step_order)
    x = _unipc_update(paper, x, models, lams, i, i + 1, bh, step_order)
  return x


def _ours(schedule, sampler, times, x_init, **options):
  params = {"mu": jnp.asarray(MU), "cov": jnp.asarray(COV), "schedule": schedule}
  return np.asarray(samplers.sample(gaussian_eps, params, schedule, jnp.asarray(x_init),
                                    jax.random.key(0), sampler=sampler, times=times,
                                    **options), np.float64)


def _uneven_times(schedule, n):
  """A Karras grid from sigma 10 (consecutive log-SNR steps differ by up to 2x), then 0."""
  return samplers.sampling_times(schedule, "unipc", n, {"spacing": "karras", "sigma_max": 10.0})


X_INIT = np.random.default_rng(3).standard_normal((64, 2))


@pytest.mark.parametrize("spacing", ["karras", "uniform"])
def test_dpm_solver_3m_matches_the_papers_algorithm_on_uneven_steps(schedule, spacing):
  """r0 != r1 on these grids: the D1 weight r0 / (r0 + r1) swapped for r1 / (r0 + r1) moves
  the output by ~1e-3 (karras from sigma 10) here, against 1e-13 measured."""
  times = samplers.sampling_times(schedule, "dpmpp_3m", 9,
                                  {"spacing": spacing, "sigma_max": 10.0})
  lam = -np.log(np.asarray(schedule.sigma_at(jnp.asarray(times[:-1]))))
  steps = np.diff(lam)
  assert np.ptp(steps[1:] / steps[:-1]) > 0.1  # the ratios differ from step to step
  out = _ours(schedule, "dpmpp_3m", times, X_INIT)
  ref = _dpmpp_3m_reference(_Paper(schedule, times), X_INIT, len(times) - 1)
  np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("bh", [1, 2])
def test_unipc_matches_the_papers_algorithm_on_uneven_steps(schedule, bh):
  """Orders 1, 2 and 3 on an uneven Karras grid, 8 steps: predictor and corrector weights,
  warm-up and the lower orders of the last steps. A corrector weight of 1 in place of 1/2
  (UniC-1, the second step's correction) moves the output by ~1e-4 here."""
  times = _uneven_times(schedule, 8)
  paper = _Paper(schedule, times)
  for order in (1, 2, 3):
    out = _ours(schedule, "unipc", times, X_INIT, order=order, bh=bh)
    ref = _unipc_reference(paper, X_INIT, len(times) - 1, bh, order)
    np.testing.assert_allclose(out, ref, rtol=0, atol=TOL, err_msg=f"order {order}")
