"""Step-restricted ARDM losses (`step_restricted`) against brute-force enumeration.

A 4-position, 3-value case (81 sequences) with the plan k = (1, 2, 1), so the steps start with
t = 0, 1 and 3 pixels revealed; every reveal set of each size and every order is enumerated and
the costs are summed in float64 from raw model calls on hand-masked inputs.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from tests.models.test_transformer import rough_params

from ardiff.models.transformer import Transformer
from ardiff.processes.autoregressive import step_restricted as sr

V, L, C = 3, 4, 2
SEQS = np.asarray(list(itertools.product(range(V), repeat=L)), np.int32)  # [81, 4]
SIZES = (1, 2, 1)
COUNTS = (0, 1, 3)
CHI2_ALPHA = 1e-4


def _model():
  return Transformer(vocab_size=V, seq_len=L, num_classes=C, width=16, depth=2, heads=2,
                     causal=False)


def _tiny(seed: int = 0):
  model = _model()
  params = rough_params(model, seed, scale=0.7)
  return params, jax.jit(lambda t, y: model.apply(params, t, y))


_WEIGHTS = (2.0, 3.0, 4.0, 5.0)


def _toy_logits(tokens, y):
  """Network-free bidirectional model: every position scores sum_{j revealed} w_j onehot(x_j),
  so the cost falls steeply with the number (and the set) of revealed pixels."""
  del y
  onehot = jax.nn.one_hot(tokens, V, dtype=jnp.float32)  # mask id V: an all-zero row
  scores = (jnp.asarray(_WEIGHTS)[None, :, None] * onehot).sum(axis=1)
  return jnp.broadcast_to(scores[:, None, :], tokens.shape + (V,))


def _labels(label: int, n: int = len(SEQS)):
  return jnp.full((n,), label, jnp.int32)


def _log_softmax64(z) -> np.ndarray:
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _logp_given64(fn, subset, x=SEQS) -> np.ndarray:
  """float64 [N, L] log p(x_i | x_subset) from one raw call with the others set to V by hand."""
  inputs = np.full_like(x, V)
  inputs[:, list(subset)] = x[:, list(subset)]
  logp = _log_softmax64(fn(jnp.asarray(inputs), _labels(0, len(x))))
  return np.take_along_axis(logp, x[..., None], -1)[..., 0]


def _brute_costs64(fn, x=SEQS, sizes=SIZES) -> np.ndarray:
  """[N, S] exact C_s(x): the mean over reveal sets R of size t_s of k_s/(L-t_s) sum_hidden."""
  costs = []
  for t, k in zip(sr.revealed_counts(sizes), sizes):
    per_set = []
    for subset in itertools.combinations(range(L), t):
      hidden = [i for i in range(L) if i not in subset]
      per_set.append(-k / (L - t) * _logp_given64(fn, subset, x)[:, hidden].sum(axis=1))
    costs.append(np.mean(per_set, axis=0))
  return np.stack(costs, axis=1)


def test_revealed_counts_are_exactly_the_allowed_ones_with_the_right_law():
  assert sr.revealed_counts(SIZES) == COUNTS
  n = 30000
  j, revealed = sr.sample_step_masks(jax.random.key(0), n, L, COUNTS)
  j, revealed = np.asarray(j), np.asarray(revealed)
  np.testing.assert_array_equal(revealed.sum(axis=1), np.asarray(COUNTS)[j])
  # One allowed count: every mask reveals exactly that many.
  _, one = sr.sample_step_masks(jax.random.key(1), 500, L, (2,))
  assert (np.asarray(one).sum(axis=1) == 2).all()
  # Law over the 16 subsets: P(R) = 1 / (m C(L, |R|)) when |R| is allowed, else 0.
  index = revealed.astype(np.int64) @ (2 ** np.arange(L))
  counts = np.bincount(index, minlength=2 ** L).astype(np.float64)
  sizes = np.array([bin(i).count("1") for i in range(2 ** L)])
  allowed = np.isin(sizes, COUNTS)
  comb = np.array([math.comb(L, s) for s in sizes], np.float64)
  right = np.where(allowed, 1 / (len(COUNTS) * comb), 0.0)
  assert counts[~allowed].sum() == 0
  stat, p = scipy.stats.chisquare(counts[allowed], n * right[allowed])
  assert p > CHI2_ALPHA, stat
  wrong = np.where(allowed, 1 / allowed.sum(), 0.0)  # uniform over the 9 allowed subsets
  assert scipy.stats.chisquare(counts[allowed], n * wrong[allowed]).pvalue < CHI2_ALPHA


def test_step_cost_given_equals_brute_force_and_the_bounds_are_the_known_ones():
  params, fn = _tiny(seed=1)
  x = jnp.asarray(SEQS)
  cost_given = jax.jit(lambda r, k: sr.step_cost_given(fn, x, _labels(0), r, k, V))
  for t, k in zip(COUNTS, SIZES):
    for subset in itertools.combinations(range(L), t):
      revealed = np.zeros(SEQS.shape, bool)
      revealed[:, list(subset)] = True
      hidden = [i for i in range(L) if i not in subset]
      want = -k / (L - t) * _logp_given64(fn, subset)[:, hidden].sum(axis=1)
      np.testing.assert_allclose(np.asarray(cost_given(jnp.asarray(revealed), float(k))), want,
                                 rtol=1e-5, atol=1e-6)
  costs = _brute_costs64(fn)
  all_orders = list(itertools.permutations(range(L)))
  # k = 1 per step (S = L): the sum is the ARDM bound, the mean over orders of the chain rule.
  chain = [sum(_logp_given64(fn, o[:s])[:, o[s]] for s in range(L)) for o in all_orders]
  np.testing.assert_allclose(_brute_costs64(fn, sizes=(1,) * L).sum(axis=1), -np.mean(chain, 0),
                             rtol=1e-9)
  # One step: independent marginals given nothing.
  np.testing.assert_allclose(_brute_costs64(fn, sizes=(L,))[:, 0],
                             -_logp_given64(fn, ()).sum(axis=1), rtol=1e-9)
  # The plan's decoder (mixture over orders of per-step products of marginals) is a normalised
  # law whose NLL the sum of step costs bounds (Jensen), strictly for some x.
  starts = sr.revealed_counts(SIZES)
  law = np.zeros(len(SEQS))
  for o in all_orders:
    logp = np.zeros(len(SEQS))
    for t, k in zip(starts, SIZES):
      logp += _logp_given64(fn, o[:t])[:, list(o[t:t + k])].sum(axis=1)
    law += np.exp(logp) / len(all_orders)
  np.testing.assert_allclose(law.sum(), 1.0, atol=1e-9)
  assert (-np.log(law) <= costs.sum(axis=1) + 1e-9).all()
  assert (costs.sum(axis=1) + np.log(law)).max() > 1e-3


@pytest.mark.parametrize("train_steps", [(1,), (2,), (0, 1, 2)])
def test_loss_is_unbiased_for_the_trained_steps_costs(train_steps):
  """E[step_restricted_loss] = sum over the trained steps of C_s (toy model: C_s differ a lot,
  so using the wrong counts or weights is many standard errors away)."""
  costs = _brute_costs64(_toy_logits)  # [81, 3]
  reps = 60
  x = jnp.asarray(np.tile(SEQS, (reps, 1)))
  est = np.asarray(jax.jit(lambda k: sr.step_restricted_loss(
      _toy_logits, x, _labels(0, len(x)), k, SIZES, train_steps, V))(jax.random.key(3)),
                   np.float64)
  exact = costs[:, list(train_steps)].sum(axis=1).mean()
  # Variance of one estimate, by enumeration: s uniform in train_steps, R uniform of size t_s.
  values, probs = [], []
  for s in train_steps:
    t, k = COUNTS[s], SIZES[s]
    subsets = list(itertools.combinations(range(L), t))
    for subset in subsets:
      hidden = [i for i in range(L) if i not in subset]
      values.append(-len(train_steps) * k / (L - t)
                    * _logp_given64(_toy_logits, subset)[:, hidden].sum(axis=1))
      probs.append(1 / (len(train_steps) * len(subsets)))
  values, probs = np.stack(values, 1), np.asarray(probs)
  np.testing.assert_allclose(values @ probs, costs[:, list(train_steps)].sum(axis=1), rtol=1e-9)
  var = ((values - (values @ probs)[:, None]) ** 2) @ probs
  se = math.sqrt(np.tile(var, reps).sum()) / len(est)
  assert abs(est.mean() - exact) < 5 * se, (train_steps, est.mean(), exact, se)
  # Power: the full plan's bound (all steps) or step 0 alone are far off for a single step.
  for other in [(0, 1, 2), (0,)]:
    if other != tuple(train_steps):
      assert abs(costs[:, list(other)].sum(axis=1).mean() - exact) > 15 * se


def test_step_cost_averages_draws_and_is_exact_with_nothing_revealed():
  x = jnp.asarray(SEQS)
  costs = _brute_costs64(_toy_logits)
  zero = np.asarray(sr.step_cost(_toy_logits, x, _labels(0), jax.random.key(0), 0, 1, V, 3))
  np.testing.assert_allclose(zero, costs[:, 0], rtol=1e-6)
  reps = 40
  xt = jnp.asarray(np.tile(SEQS, (reps, 1)))
  got = np.asarray(jax.jit(lambda k: sr.step_cost(_toy_logits, xt, _labels(0, len(xt)), k, 1, 2,
                                                  V, draws=4))(jax.random.key(1)), np.float64)
  want = np.tile(costs[:, 1], reps)
  assert abs(got.mean() - want.mean()) < 0.02 * want.mean()
  # Same key, same reveal sets: the toy and itself agree exactly (paired comparisons).
  again = np.asarray(jax.jit(lambda k: sr.step_cost(_toy_logits, xt, _labels(0, len(xt)), k, 1,
                                                    2, V, draws=4))(jax.random.key(1)))
  np.testing.assert_array_equal(got.astype(np.float32), again)


def test_process_loss_scale_and_validation():
  model = _model()
  params = rough_params(model, 2, scale=0.7)
  batch = {"x": jnp.asarray(SEQS), "y": _labels(0)}
  for steps, pixels in [((1,), 2), (None, L)]:
    process = sr.StepRestrictedAR(model, SIZES, steps, p_uncond=0.0)
    assert process.pixels_trained == pixels
    loss, metrics = jax.jit(process.loss, static_argnames="train")(
        params, batch, jax.random.key(0), train=False)
    np.testing.assert_allclose(float(loss) * pixels, float(metrics["steps_cost"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["steps_cost_bpd"]),
                               float(metrics["steps_cost"]) / (L * math.log(2)), rtol=1e-6)
  # A one-step network's loss is the mean -log p over the hidden pixels of its masks.
  process = sr.StepRestrictedAR(model, (2, 2), (1,), p_uncond=0.0)
  fn = jax.jit(lambda t, y: model.apply(params, t, y))
  want = np.mean([-_logp_given64(fn, s)[:, [i for i in range(L) if i not in s]].mean(axis=1)
                  for s in itertools.combinations(range(L), 2)])
  big = {"x": jnp.asarray(np.tile(SEQS, (30, 1))), "y": _labels(0, 30 * len(SEQS))}
  loss_fn = jax.jit(lambda k: process.loss(params, big, k, train=False)[0])
  loss = np.mean([float(loss_fn(jax.random.key(i))) for i in range(3)])
  assert abs(loss - want) < 0.03 * want, (loss, want)
  with pytest.raises(ValueError, match="sum to 4"):
    sr.StepRestrictedAR(model, (1, 2))
  with pytest.raises(ValueError, match="train_steps must be distinct step indices in 0..2"):
    sr.StepRestrictedAR(model, SIZES, (3,))
  with pytest.raises(ValueError, match="train_steps"):
    sr.StepRestrictedAR(model, SIZES, (1, 1))
  # Samples with ARDM's specs (its parent's contract).
  out = process.sample(params, jax.random.key(0), np.array([0, 1]), "ardm:k=2")
  assert out.shape == (2, L) and int(np.asarray(out).max()) < V
