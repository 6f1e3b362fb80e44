"""Masked diffusion (`ardiff.processes.masked`) against enumeration on a tiny model (3 positions,
3 values): the continuous-time ELBO by numerical integration over t, and the ancestral sampler's
exact law by enumerating when each position is unmasked."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from tests.processes.autoregressive.test_autoregressive import C as AR_C, L as AR_L, V as AR_V
from tests.processes.autoregressive.test_autoregressive import _log_softmax64 as log_softmax64
from tests.processes.autoregressive.test_autoregressive import _tiny as tiny_ar_model

from ardiff.processes import randomness
from ardiff.processes.masked.process import MaskedDiffusion, masked_diffusion_loss
from ardiff.processes.masked.schedules import MaskingSchedule
from ardiff.processes.token_samplers.masked import ancestral_history

V, L, C = 3, 3, 2
assert (V, L, C) == (AR_V, AR_L, AR_C)  # the tiny model comes from test_autoregressive
SEQS = np.asarray(list(itertools.product(range(V), repeat=L)), np.int32)  # [27, 3]
MASKS = [m for k in range(1, L + 1) for m in itertools.combinations(range(L), k)]

# The schedules written out again (float64), independent of the library's.
ALPHA = {"linear": (lambda t: 1 - t, lambda t: -1.0),
         "cosine": (lambda t: 1 - math.cos(math.pi / 2 * (1 - t)),
                    lambda t: -math.pi / 2 * math.sin(math.pi / 2 * (1 - t))),
         "polynomial": (lambda t: 1 - t**3, lambda t: -3 * t**2)}


def _tiny(seed=0):
  """test_autoregressive's tiny bidirectional model (same V, L, C): model, params, logits fn."""
  return tiny_ar_model(False, seed)


def _logp64(fn, inputs, label):
  return log_softmax64(fn(jnp.asarray(inputs), jnp.full((len(inputs),), label, jnp.int32)))


def _masked_nll_sums(fn, label):
  """{mask set M: [27] sum over i in M of -log p(x_i | x with M masked)} (float64)."""
  out = {}
  for m in MASKS:
    inputs = SEQS.copy()
    inputs[:, list(m)] = V
    logp = _logp64(fn, inputs, label)
    out[m] = -sum(logp[np.arange(len(SEQS)), i, SEQS[:, i]] for i in m)
  return out


def _elbo_by_quadrature(sums, schedule):
  """int_0^1 -alpha'/(1 - alpha) E_M[sum_{i in M} nll_i] dt with P(M | t) = (1-a)^|M| a^(L-|M|),
  the 1/(1 - alpha) folded into (1 - alpha)^(|M| - 1) so the integrand is finite at t = 0."""
  alpha, dalpha = ALPHA[schedule]
  out = np.zeros(len(SEQS))
  for m, s in sums.items():
    k = len(m)
    w, _ = scipy.integrate.quad(
        lambda t: -dalpha(t) * (1 - alpha(t)) ** (k - 1) * alpha(t) ** (L - k), 0, 1,
        epsabs=1e-12, epsrel=1e-10)
    out += w * s
  return out


def _order_mixture_logp(fn, label):
  """log of the order mixture's probability: mean over the 6 orders of the chain rule."""
  probs = []
  for order in itertools.permutations(range(L)):
    total = np.zeros(len(SEQS))
    for t, pos in enumerate(order):
      inputs = np.full_like(SEQS, V)
      inputs[:, list(order[:t])] = SEQS[:, list(order[:t])]
      total += _logp64(fn, inputs, label)[np.arange(len(SEQS)), pos, SEQS[:, pos]]
    probs.append(np.exp(total))
  return np.log(np.mean(probs, axis=0)), [np.log(p) for p in probs]


def test_elbo_is_the_ardm_bound_for_every_schedule_and_bounds_the_mixture():
  _, _, fn = _tiny(seed=1)
  sums = _masked_nll_sums(fn, 0)
  mixture, per_order = _order_mixture_logp(fn, 0)
  ardm_bound = -np.mean(per_order, axis=0)  # the ARDM bound: mean over orders of -log p_order
  for schedule in ALPHA:
    elbo = _elbo_by_quadrature(sums, schedule)
    np.testing.assert_allclose(elbo, ardm_bound, rtol=1e-7, err_msg=schedule)
  assert (ardm_bound >= -mixture - 1e-9).all() and (ardm_bound > -mixture + 1e-4).any()


@pytest.mark.parametrize("schedule", ["linear", "cosine", "polynomial"])
def test_loss_is_an_unbiased_estimate_of_the_elbo(schedule):
  model, params, fn = _tiny(seed=2)
  exact = _elbo_by_quadrature(_masked_nll_sums(fn, 1), schedule).mean()
  lib = MaskingSchedule(schedule, power=3.0)
  x = jnp.asarray(np.tile(SEQS, (40, 1)))  # 1080 examples per draw
  y = jnp.full((len(x),), 1, jnp.int32)
  loss = jax.jit(lambda k: masked_diffusion_loss(fn, x, y, k, V, lib).mean())
  draws = np.array([float(loss(jax.random.key(i))) for i in range(30)])
  se = draws.std(ddof=1) / math.sqrt(len(draws))
  assert abs(draws.mean() - exact) < 5 * se, (draws.mean(), exact, se)
  assert se < 0.05 * exact  # the check has teeth: a wrong weight moves the mean by far more


def _ancestral_law(fn, label, steps, schedule):
  """Exact law of masked:steps: each position is unmasked at step k with probability
  alpha(t_{k+1}) - alpha(t_k), independently; within a step, positions are drawn independently
  given the tokens revealed before it."""
  alpha, _ = ALPHA[schedule]
  grid = [1 - k / steps for k in range(steps + 1)]
  p_step = [alpha(grid[k + 1]) - alpha(grid[k]) for k in range(steps)]
  law = np.zeros(len(SEQS))
  for assign in itertools.product(range(steps), repeat=L):
    weight = np.prod([p_step[k] for k in assign])
    logp = np.zeros(len(SEQS))
    for k in range(steps):
      inputs = np.where(np.asarray(assign)[None, :] < k, SEQS, V)
      here = [i for i in range(L) if assign[i] == k]
      lp = _logp64(fn, inputs, label)
      for i in here:
        logp += lp[np.arange(len(SEQS)), i, SEQS[:, i]]
    law += weight * np.exp(logp)
  return law


def test_ancestral_sampler_has_its_exact_law():
  model, params, fn = _tiny(seed=3)
  process = MaskedDiffusion(model, schedule=MaskingSchedule("cosine"))
  n = 50000
  x = np.asarray(process.sample(params, jax.random.key(0), np.zeros(n, np.int32), "masked:3"))
  counts = np.bincount((x * np.array([V * V, V, 1])).sum(1), minlength=len(SEQS))
  law = _ancestral_law(fn, 0, 3, "cosine")
  np.testing.assert_allclose(law.sum(), 1.0, rtol=1e-9)
  assert scipy.stats.chisquare(counts, n * law).pvalue > 1e-3
  # Negative controls: all at once (1 step), and the linear schedule's step probabilities.
  for wrong in (_ancestral_law(fn, 0, 1, "cosine"), _ancestral_law(fn, 0, 3, "linear")):
    assert scipy.stats.chisquare(counts, n * wrong / wrong.sum()).pvalue < 1e-6
  assert process.nfe("masked:3") == 3


def test_builder_schedule_section_and_bad_values():
  from ardiff import build
  from ardiff.configs import ConfigError
  from tests.processes.test_contract import tiny_images

  section, extra, _ = build.BUILDERS.get("masked").example()
  process = build.build("masked", section, tiny_images(), **extra)
  assert process.schedule == MaskingSchedule("cosine")
  for bad, message in [({"schedule": "exp"}, "masking schedule must be one of"),
                       ({"schedule": "polynomial", "power": 0}, "power must be a number > 0"),
                       ({"warp": 1}, "no key\\(s\\) \\['warp'\\]")]:
    with pytest.raises(ConfigError, match=message):
      build.build("masked", section, tiny_images(), masking=bad)
  with pytest.raises(ValueError, match="sampler 'masked' needs a step count"):
    process.nfe("masked")


@pytest.mark.parametrize("schedule", ["cosine", "polynomial"])
def test_ancestral_steps_unmask_the_schedules_fraction_and_never_change_a_pixel(schedule):
  """After step k a pixel is unmasked with probability alpha(t_{k+1}) (t_k = 1 - k / S), on a toy
  callback with 64 positions; revealed pixels never change; the last step unmasks the rest."""
  steps, b, length = 5, 256, 64
  logits = jax.random.normal(jax.random.key(1), (b, length, V))
  tokens, history = ancestral_history(
      lambda t: logits, randomness.example_keys(jax.random.key(2), b),
      jnp.full((b, length), V, jnp.int32), steps, mask_id=V,
      schedule=MaskingSchedule(schedule, power=3.0), temperature=1.0)
  history = np.asarray(history)
  alpha, _ = ALPHA[schedule]
  for k in range(steps):
    frac = (history[k] != V).mean()
    p = alpha(1 - (k + 1) / steps)
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / (b * length)) + 1e-9, (k, frac, p)
    if k:
      was = history[k - 1] != V
      np.testing.assert_array_equal(history[k][was], history[k - 1][was])
  assert (np.asarray(tokens) < V).all()


def _exact_law_by_states(fn, label, steps, schedule, resample):
  """The sampler written as Markov kernels on the 4^3 partially masked states (float64, one
  model call per state): each step unmasks each hidden pixel with probability
  (m_t - m_s) / m_t (m = 1 - alpha) and draws it; the corrector masks each revealed pixel with
  probability `resample` and redraws the masked ones given the rest."""
  from collections import defaultdict

  alpha, _ = ALPHA[schedule]
  m = [1 - alpha(1 - k / steps) for k in range(steps + 1)]
  cache = {}

  def probs(state):
    if state not in cache:
      cache[state] = np.exp(_logp64(fn, np.array([state]), label)[0])
    return cache[state]

  dist = {(V,) * L: 1.0}
  for k in range(steps):
    p = 1.0 if k == steps - 1 else (m[k] - m[k + 1]) / m[k]
    new = defaultdict(float)
    for state, w in dist.items():
      pr = probs(state)
      options = [[(state[i], 1.0)] if state[i] != V else
                 [(V, 1 - p)] + [(v, p * pr[i, v]) for v in range(V)] for i in range(L)]
      for combo in itertools.product(*options):
        new[tuple(v for v, _ in combo)] += w * np.prod([q for _, q in combo])
    dist = new
    if resample and k < steps - 1:
      new = defaultdict(float)
      for state, w in dist.items():
        revealed = [i for i in range(L) if state[i] != V]
        for n_again in range(len(revealed) + 1):
          for again in itertools.combinations(revealed, n_again):
            q = resample ** n_again * (1 - resample) ** (len(revealed) - n_again)
            masked = tuple(V if i in again else state[i] for i in range(L))
            pr = probs(masked)
            for values in itertools.product(range(V), repeat=n_again):
              out = list(state)
              for i, v in zip(again, values):
                out[i] = v
              new[tuple(out)] += w * q * np.prod([pr[i, v] for i, v in zip(again, values)])
      dist = new
  return np.array([dist.get(tuple(s), 0.0) for s in SEQS])


def test_resampling_corrector_has_its_exact_law():
  model, params, fn = _tiny(seed=4)
  process = MaskedDiffusion(model, schedule=MaskingSchedule("cosine"))
  n = 100000
  x = np.asarray(process.sample(params, jax.random.key(1), np.zeros(n, np.int32),
                                "masked:2:resample=0.6"))
  counts = np.bincount((x * np.array([V * V, V, 1])).sum(1), minlength=len(SEQS))
  law = _exact_law_by_states(fn, 0, 2, "cosine", 0.6)
  np.testing.assert_allclose(law.sum(), 1.0, rtol=1e-9)
  # The state-kernel reference agrees with the enumeration over unmask steps without resampling.
  np.testing.assert_allclose(_exact_law_by_states(fn, 0, 3, "cosine", 0.0),
                             _ancestral_law(fn, 0, 3, "cosine"), rtol=1e-5)  # float32 calls
  assert scipy.stats.chisquare(counts, n * law).pvalue > 1e-3
  no_corrector = _exact_law_by_states(fn, 0, 2, "cosine", 0.0)
  assert scipy.stats.chisquare(counts, n * no_corrector).pvalue < 1e-6
  assert process.nfe("masked:2:resample=0.6") == 3 and process.nfe("masked:5:resample=0.1") == 9
  with pytest.raises(ValueError, match="resample must be a number in \\[0, 1\\)"):
    process.nfe("masked:4:resample=1")


def test_corrector_redraws_the_resample_fraction_given_the_others():
  """A callback that predicts 0 from an all-masked input and 1 once any pixel is revealed: after
  the first step's corrector, the fraction of revealed pixels holding 1 is the resample rate."""
  b, length, rate = 128, 64, 0.3

  def logits_fn(tokens):
    any_revealed = (tokens != V).any(axis=1)
    value = jnp.where(any_revealed, 1, 0)
    return 30.0 * jax.nn.one_hot(jnp.broadcast_to(value[:, None], tokens.shape), V)

  _, history = ancestral_history(logits_fn, randomness.example_keys(jax.random.key(5), b),
                                jnp.full((b, length), V, jnp.int32), 4, mask_id=V,
                                schedule=MaskingSchedule("linear"), resample=rate)
  first = np.asarray(history[0])
  revealed = first != V
  frac = (first[revealed] == 1).mean()
  n = revealed.sum()
  assert n > 1000 and abs(frac - rate) < 5 * math.sqrt(rate * (1 - rate) / n), (frac, n)
