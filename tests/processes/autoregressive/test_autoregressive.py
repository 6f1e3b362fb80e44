"""Tests for orders, objectives, samplers and the two autoregressive processes.

Exact references come from enumerating every sequence of a 3-position, 3-value model (27
sequences, 6 orders) with randomly drawn, far-from-uniform parameters.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from tests.models.test_transformer import rough_params
from tests.processes.autoregressive import plans

from ardiff.processes.autoregressive import decode, objectives, orders
from ardiff.processes.autoregressive.order_agnostic import OrderAgnosticAR
from ardiff.processes.autoregressive.raster import RasterAR
from ardiff.processes.guidance import Guidance, guidance_cond, make_guidance
from ardiff.models.transformer import Transformer

V, L, C = 3, 3, 2  # values, positions, classes
SEQS = jnp.asarray(list(itertools.product(range(V), repeat=L)), jnp.int32)  # [27, 3]
ORDERS = list(itertools.permutations(range(L)))


def _tiny(causal: bool, seed: int = 0):
  model = Transformer(vocab_size=V, seq_len=L, num_classes=C, width=16, depth=2, heads=2,
                      causal=causal)
  params = rough_params(model, seed, scale=0.7)
  return model, params, jax.jit(lambda t, y: model.apply(params, t, y))


def _labels(label: int, n: int = len(SEQS)) -> jax.Array:
  return jnp.full((n,), label, jnp.int32)


def _log_softmax64(logits) -> np.ndarray:
  z = np.asarray(logits, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _order_logp64(logits_fn, y: jax.Array, order) -> np.ndarray:
  """Float64 chain rule along one order from raw model calls: log p_order(x) for all SEQS."""
  total = np.zeros(len(SEQS))
  x = np.asarray(SEQS)
  for t, pos in enumerate(order):
    inputs = np.full_like(x, V)
    inputs[:, list(order[:t])] = x[:, list(order[:t])]
    logp = _log_softmax64(logits_fn(jnp.asarray(inputs), y))
    total += logp[np.arange(len(x)), pos, x[:, pos]]
  return total


# ----------------------------------------------------------------------------- normalisation


def test_causal_model_is_normalised():
  model, params, fn = _tiny(True)
  for label in range(C + 1):  # includes the null label
    nll = np.asarray(objectives.raster_nll(fn(SEQS, _labels(label)), SEQS), np.float64)
    np.testing.assert_allclose(np.exp(-nll).sum(), 1.0, atol=1e-5)
    assert np.exp(-nll).max() > 3 / len(SEQS)  # far from uniform, so the check has teeth
  # Negative control: bidirectional logits (which read x_i itself) are not a normalised chain.
  _, _, leaky = _tiny(False)
  nll = np.asarray(objectives.raster_nll(leaky(SEQS, _labels(0)), SEQS))
  assert abs(np.exp(-nll).sum() - 1.0) > 1e-2


def test_order_agnostic_model_is_normalised_under_every_order():
  _, _, fn = _tiny(False)
  y = _labels(1)
  order_nll = jax.jit(lambda o: objectives.order_nll(fn, SEQS, y, o, V))
  for order in ORDERS:
    nll = np.asarray(order_nll(jnp.asarray(order)), np.float64)
    np.testing.assert_allclose(np.exp(-nll).sum(), 1.0, atol=1e-5)
    np.testing.assert_allclose(-nll, _order_logp64(fn, y, order), atol=1e-4)


def test_bpd_convention():
  nll = jnp.array([L * math.log(2.0), 0.0])
  np.testing.assert_allclose(objectives.nats_to_bpd(nll, L), [1.0, 0.0])


# ----------------------------------------------------------------------------- ARDM bound


def _exact_ardm_terms(fn, y):
  """Per t: [27, C(L,t)] ARDM estimates for every reveal set of size t (library loss)."""
  loss_given = jax.jit(lambda revealed: objectives.ardm_loss_given(fn, SEQS, y, revealed, V))
  terms = []
  for t in range(L):
    per_set = []
    for subset in itertools.combinations(range(L), t):
      revealed = np.zeros((len(SEQS), L), bool)
      revealed[:, list(subset)] = True
      per_set.append(np.asarray(loss_given(jnp.asarray(revealed)), np.float64))
    terms.append(np.stack(per_set, axis=1))
  return terms


def test_ardm_bound_equals_average_over_orders():
  _, _, fn = _tiny(False, seed=3)
  y = _labels(0)
  # Way 1: average over all 6 orders of the exact chain-rule NLL (float64, raw model calls).
  by_orders = -np.mean([_order_logp64(fn, y, order) for order in ORDERS], axis=0)
  # Way 2: the exact expectation of the ARDM loss over t ~ U{0..L-1} and reveal sets.
  terms = _exact_ardm_terms(fn, y)
  by_ardm = np.mean([term.mean(axis=1) for term in terms], axis=0)
  np.testing.assert_allclose(by_ardm, by_orders, rtol=1e-5)
  # And the library's per-order evaluation, averaged over the orders.
  order_nll = jax.jit(lambda o: objectives.order_nll(fn, SEQS, y, o, V))
  lib = np.mean([np.asarray(order_nll(jnp.asarray(o))) for o in ORDERS], axis=0)
  np.testing.assert_allclose(lib, by_orders, rtol=1e-5)
  # The bound is above the order mixture's NLL (Jensen) and differs from every single order.
  mixture = -np.log(np.mean([np.exp(_order_logp64(fn, y, o)) for o in ORDERS], axis=0))
  assert (by_orders >= mixture - 1e-9).all()


def test_monte_carlo_bound_and_per_step_losses_are_unbiased():
  _, _, fn = _tiny(False, seed=4)
  reps = 100
  x = jnp.tile(SEQS, (reps, 1))
  y = _labels(1, len(x))
  terms = _exact_ardm_terms(fn, _labels(1))
  # One ARDM sample per row: mean over rows vs the exact mean, within 5 standard errors.
  all_values = np.concatenate([term for term in terms], axis=1)  # [27, 2^L - 1] weighted below
  weights = np.concatenate([np.full(term.shape[1], 1 / (L * term.shape[1])) for term in terms])
  exact = all_values @ weights  # [27]
  var = ((all_values - exact[:, None]) ** 2) @ weights
  mc = np.asarray(jax.jit(lambda k: plans.ardm_bound_mc(fn, x, y, k, V, num_samples=4))(
      jax.random.key(0)))
  se = math.sqrt(np.tile(var, reps).sum() / 4) / len(x)
  assert abs(mc.mean() - np.tile(exact, reps).mean()) < 5 * se
  # L_t = mean per hidden position; t = 0 has no randomness, other t within 5 standard errors.
  per_step = np.asarray(jax.jit(lambda k: objectives.per_step_losses(fn, x, y, k, V))(
      jax.random.key(1)))
  assert per_step.shape == (L,)
  for t, term in enumerate(terms):
    per_pos = term / L  # ardm_loss_given / L = mean -log p over the L - t hidden positions
    mean = per_pos.mean()
    se = math.sqrt(per_pos.var(axis=1).mean() / len(x) + 1e-12)
    assert abs(per_step[t] - mean) < 5 * se + 1e-5, (t, per_step[t], mean, se)
  np.testing.assert_allclose(per_step.sum(), exact.mean(), rtol=0.05)
  # In chunks (7 does not divide the 2700 rows: a remainder chunk), the same orders and losses.
  chunked = np.asarray(jax.jit(lambda k: objectives.per_step_losses(fn, x, y, k, V,
                                                                    batch_size=7))(
      jax.random.key(1)))
  np.testing.assert_allclose(chunked, per_step, rtol=1e-5)


def test_reveal_sampler_law_chi_square():
  """sample_revealed: t ~ U{0..L-1}, then a uniform subset of size t: P(S) = 1 / (L C(L, |S|))."""
  length, n = 4, 40000
  revealed = np.asarray(objectives.sample_revealed(jax.random.key(21), n, length))
  assert revealed.shape == (n, length) and revealed.dtype == bool
  index = revealed.astype(np.int64) @ (2 ** np.arange(length))
  counts = np.bincount(index, minlength=2 ** length)
  sizes = np.array([bin(i).count("1") for i in range(2 ** length)])
  comb = np.array([math.comb(length, s) for s in sizes], np.float64)
  exact = np.where(sizes < length, 1 / (length * comb), 0.0)  # 15 subsets; the full set never
  np.testing.assert_allclose(exact.sum(), 1.0)
  wrong = {
      # randint(k_t, (batch, 1), 1, length): t ~ U{1..L-1}, the empty set never drawn.
      "t ~ U{1..L-1}": np.where((sizes > 0) & (sizes < length),
                                1 / ((length - 1) * comb), 0.0),
      "uniform over the 15 subsets": np.where(sizes < length, 1 / (2 ** length - 1), 0.0),
      "t ~ U{0..L}": 1 / ((length + 1) * comb),
  }
  # Observed X^2 (key 21; threshold 42.6, dof 14): 16.0 against the exact law; inf against
  # t ~ U{1..L-1} (empty sets drawn, probability 0 there), 2.2e4 against the uniform law, 1.0e4
  # against t ~ U{0..L}. With randint(..., 1, length) in the library: 1.3e4 against the exact law.
  _check_law(counts, exact, wrong)
  assert counts[2 ** length - 1] == 0  # t < L: something is always left to predict
  # "Nothing revealed yet" (t = 0) has probability 1 / L.
  assert abs(counts[0] / n - 1 / length) < 5 * math.sqrt((1 / length) * (1 - 1 / length) / n)


_TOY_L = 4
_TOY_X = np.array([[v] * _TOY_L for v in range(V)], np.int32)  # every position the same value
_TOY_WEIGHTS = (2.0, 3.0, 4.0, 5.0)  # how strongly a revealed position speaks, per position


def _toy_logits(tokens: jax.Array, y: jax.Array) -> jax.Array:
  """A network-free bidirectional "model": [B, L] tokens (hidden = V) -> logits [B, L, V].

  Every position gets sum over revealed positions j of weight_j * onehot(x_j): uniform when
  nothing is revealed (L_0 = log V), confident in the revealed value otherwise, and more so
  the more (and the later) positions are revealed, so the reveal set matters, not only t.
  """
  del y
  onehot = jax.nn.one_hot(tokens, V, dtype=jnp.float32)  # the mask id V gives an all-zero row
  scores = (jnp.asarray(_TOY_WEIGHTS)[None, :, None] * onehot).sum(axis=1)  # [B, V]
  return jnp.broadcast_to(scores[:, None, :], tokens.shape + (V,))


def _toy_ardm_terms64(x: np.ndarray) -> list[np.ndarray]:
  """Per t: float64 [B, C(L,t)] ARDM estimates L/(L-t) sum_hidden -log p, every reveal set.

  Independent of the library's loss: float64 log-softmax of the toy logits, summed here.
  """
  b, length = x.shape
  rows = np.arange(b)[:, None]
  terms = []
  for t in range(length):
    per_set = []
    for subset in itertools.combinations(range(length), t):
      revealed = np.zeros((b, length), bool)
      revealed[:, list(subset)] = True
      inputs = np.where(revealed, x, V).astype(np.int32)
      logp = _log_softmax64(_toy_logits(jnp.asarray(inputs), jnp.zeros(b, jnp.int32)))
      nll = -logp[rows, np.arange(length)[None], x]  # [B, L]
      per_set.append(length / (length - t) * np.where(revealed, 0.0, nll).sum(axis=1))
    terms.append(np.stack(per_set, axis=1))
  return terms


def test_monte_carlo_bound_detects_biased_t_on_a_toy_model():
  terms = _toy_ardm_terms64(_TOY_X)
  per_t = np.stack([term.mean(axis=1) for term in terms], axis=1)  # [3 rows, L]: E[est | t]
  # L_0 = log V is far above every L_t, t > 0: dropping t = 0 would bias the estimate.
  l_t = per_t.mean(axis=0) / _TOY_L  # mean -log p per hidden position given t revealed
  np.testing.assert_allclose(l_t[0], math.log(V), rtol=1e-12)
  assert (l_t[1:] < 0.5 * l_t[0]).all(), l_t
  exact = per_t.mean(axis=1)  # t ~ U{0..L-1}, reveal set uniform given t
  var = np.mean([((term - exact[:, None]) ** 2).mean(axis=1) for term in terms], axis=0)
  wrong = per_t[:, 1:].mean(axis=1)  # t ~ U{1..L-1}
  reps, num_samples = 700, 4
  x = jnp.asarray(np.tile(_TOY_X, (reps, 1)))
  y = jnp.zeros(len(x), jnp.int32)
  n = len(x)
  for name, samples, estimate in [
      ("ardm_bound_mc", num_samples, jax.jit(lambda k: plans.ardm_bound_mc(
          _toy_logits, x, y, k, V, num_samples=num_samples))(jax.random.key(31))),
      ("ardm_loss", 1, jax.jit(lambda k: objectives.ardm_loss(_toy_logits, x, y, k, V))(
          jax.random.key(32)))]:
    se = math.sqrt(np.tile(var, reps).sum() / samples) / n  # from the enumerated variance
    target, biased = np.tile(exact, reps).mean(), np.tile(wrong, reps).mean()
    mc = float(np.asarray(estimate, np.float64).mean())
    # Observed: exact 1.198, t from 1..L-1 would give 0.133; se 0.020 (mc, 4 samples) and
    # 0.041 (one sample): the biased mean is > 25 standard errors away. Monte Carlo means
    # 1.152 (mc) and 1.146 (loss); with randint(..., 1, length) in the library mc gives 0.136.
    assert abs(biased - target) > 15 * se, (name, biased, target, se)  # the check's power
    assert abs(mc - target) < 5 * se, (name, mc, target, se, biased)
  # per_step_losses: one random order per example and t, mean over the hidden positions.
  per_step = np.asarray(jax.jit(lambda k: objectives.per_step_losses(_toy_logits, x, y, k, V))(
      jax.random.key(33)), np.float64)
  assert per_step.shape == (_TOY_L,)
  for t, term in enumerate(terms):
    per_pos = term / _TOY_L
    se = math.sqrt(np.tile(per_pos.var(axis=1), reps).mean() / n)
    assert abs(per_step[t] - per_pos.mean()) < 5 * se + 1e-5, (t, per_step[t], per_pos.mean())


# ----------------------------------------------------------------------------- orders


def test_chunk_plan_reveals_contiguous_chunks():
  plan = np.asarray(orders.chunk_plan(10, 3))
  assert plan.shape == (4, 10)
  np.testing.assert_array_equal(plan.sum(axis=0), np.ones(10))
  for s, (lo, hi) in enumerate([(0, 3), (3, 6), (6, 9), (9, 10)]):
    np.testing.assert_array_equal(np.flatnonzero(plan[s]), np.arange(lo, hi))


def test_random_plan_reveals_each_position_once_in_order():
  key = jax.random.key(7)
  plan = np.asarray(orders.random_plan(key, 5, 11, k=4))
  order = np.asarray(orders.random_orders(key, 5, 11))
  assert plan.shape == (5, 3, 11)
  for b in range(5):
    np.testing.assert_array_equal(np.sort(order[b]), np.arange(11))
    np.testing.assert_array_equal(plan[b].sum(axis=0), np.ones(11))
    for s, (lo, hi) in enumerate([(0, 4), (4, 8), (8, 11)]):
      np.testing.assert_array_equal(np.flatnonzero(plan[b, s]), np.sort(order[b, lo:hi]))
  assert len({tuple(o) for o in order}) == 5  # different orders per example
  budget_plan = np.asarray(orders.random_plan(key, 5, 11, step_sizes=(1, 7, 3)))
  np.testing.assert_array_equal(budget_plan.sum(axis=2), np.tile([1, 7, 3], (5, 1)))


def test_inpainting_plan_covers_only_unknown_positions():
  known = np.zeros((3, 8), bool)
  known[:, :5] = True
  known[2] = np.roll(known[2], 2)
  for key in (None, jax.random.key(0)):
    plan = np.asarray(plans.inpainting_plan(key, known, k=2))
    assert plan.shape == (3, 2, 8)
    np.testing.assert_array_equal(plan.sum(axis=1) + known, np.ones((3, 8)))
  raster = np.asarray(plans.inpainting_plan(None, known, k=2))
  np.testing.assert_array_equal(np.flatnonzero(raster[0, 0]), [5, 6])


def test_orders_reject_bad_input():
  with pytest.raises(ValueError, match="k"):
    orders.uniform_step_sizes(8, 0)
  with pytest.raises(ValueError, match="k"):
    orders.uniform_step_sizes(8, 9)
  with pytest.raises(ValueError, match="step_sizes"):
    orders.reveal_plan(orders.raster_order(8), (3, 3))
  with pytest.raises(ValueError, match="step_sizes"):
    orders.reveal_plan(orders.raster_order(8), (4, 0, 4))
  with pytest.raises(ValueError, match="exactly one of k and step_sizes"):
    orders.random_plan(jax.random.key(0), 2, 8, k=2, step_sizes=(8,))
  with pytest.raises(ValueError, match="known_mask"):
    plans.inpainting_plan(None, np.array([[True, False], [True, True]]), k=1)


# ----------------------------------------------------------------------------- sampling


def _cond(y, w, neg_y=None, null: int | None = None):
  """The guidance `cond` of weight w (None: unguided) with per-example negative labels neg_y
  (default: the null label, C unless given)."""
  if w is None:
    return None
  cond = guidance_cond(y, Guidance(w), C if null is None else null)
  return cond if neg_y is None else {**cond, "neg": jnp.asarray(neg_y, jnp.int32)}


def _causal(length: int = 16):
  model = Transformer(vocab_size=5, seq_len=length, num_classes=C, width=32, depth=2, heads=4)
  return model, rough_params(model, 5, scale=0.4)


@pytest.mark.parametrize("guidance,negative", [(None, False), (1.5, False), (2.0, True)])
def test_kv_cache_sampler_equals_no_cache_sampler(guidance, negative):
  model, params = _causal()
  y = jnp.array([0, 1, 2, 0, 1, 2, 1, 0])  # 2 = null label
  neg_y = jnp.array([1, 0, 0, 1, 0, 1, 0, 1]) if negative else None
  kw = dict(temperature=0.8, cond=_cond(y, guidance, neg_y))
  for seed in range(2):
    a = decode.raster_sample(model, params, jax.random.key(seed), y, **kw)
    b = decode.raster_sample(model, params, jax.random.key(seed), y, use_cache=False, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(np.unique(np.asarray(a))) > 1


@pytest.mark.parametrize("guidance,steps", [(None, 64), (1.5, 41)])
def test_kv_cache_sampler_by_segments_equals_no_cache_sampler(guidance, steps):
  """Segments of 16 positions at L = 64: caches of 16, 32, 48, 64 slots, each grown from the
  last (41 steps end inside a segment); the tokens of the no-cache reference and of one scan
  over the full cache."""
  model, params = _causal(64)
  y = jnp.array([0, 1, 2, 0, 1, 2, 1, 0])
  kw = dict(temperature=0.8, cond=_cond(y, guidance), num_steps=steps)
  key = jax.random.key(5)
  ref = np.asarray(decode.raster_sample(model, params, key, y, use_cache=False, **kw))
  for segment in (16, None):
    out = decode.raster_sample(model, params, key, y, segment=segment, **kw)
    np.testing.assert_array_equal(np.asarray(out), ref, err_msg=f"segment={segment}")
  assert len(np.unique(ref[:, 32:steps])) > 1 and (ref[:, steps:] == 0).all()


def test_guidance_one_is_conditional_zero_unconditional_and_negative_label_matters():
  model, params = _causal()
  y = jnp.array([0, 1, 0, 1])
  key = jax.random.key(3)
  plain = decode.raster_sample(model, params, key, y)
  np.testing.assert_array_equal(decode.raster_sample(model, params, key, y, cond=_cond(y, 1.0)),
                                plain)
  null = jnp.full_like(y, model.num_classes)
  np.testing.assert_array_equal(decode.raster_sample(model, params, key, y, cond=_cond(y, 0.0)),
                                decode.raster_sample(model, params, key, null))
  guided = decode.raster_sample(model, params, key, y, cond=_cond(y, 3.0))
  negative = decode.raster_sample(model, params, key, y, cond=_cond(y, 3.0, 1 - y))
  assert (np.asarray(guided) != np.asarray(negative)).any()
  with pytest.raises(ValueError, match="needs a guidance scale"):  # a negative needs a w
    make_guidance(None, negative=1)
  with pytest.raises(ValueError, match="temperature"):
    decode.raster_sample(model, params, key, y, temperature=0.0)


def _empirical(tokens: np.ndarray) -> np.ndarray:
  index = (tokens * V ** np.arange(L - 1, -1, -1)).sum(axis=1)
  return np.bincount(index, minlength=V ** L) / len(tokens)


def _assert_matches(freq: np.ndarray, prob: np.ndarray, n: int):
  se = np.sqrt(prob * (1 - prob) / n)
  np.testing.assert_allclose(prob.sum(), 1.0, atol=1e-5)
  assert (np.abs(freq - prob) < 5 * se + 1e-3).all(), np.abs(freq - prob).max()


# Pearson chi-square checks of sampled sequences against an exact float64 law. Each check
# against the true law rejects with probability ~CHI2_ALPHA (asymptotically), so a correct
# sampler fails a check about once in 10^4 seeds; the seeds are fixed, so the tests are
# deterministic. The same threshold must be exceeded against every plausible wrong law.
CHI2_ALPHA = 1e-4


def _counts(tokens: np.ndarray) -> np.ndarray:
  index = (tokens * V ** np.arange(L - 1, -1, -1)).sum(axis=1)
  return np.bincount(index, minlength=V ** L)


def _chi_square(counts: np.ndarray, prob: np.ndarray, min_expected: float = 5.0):
  """Pearson's X^2 of counts against prob and the (1 - CHI2_ALPHA) quantile of chi2(dof).

  Cells of probability 0 are dropped (any count there gives X^2 = inf); the cells with expected
  count < min_expected are pooled into one (with the next smallest until the pool reaches it).
  """
  counts = np.asarray(counts, np.float64)
  prob = np.asarray(prob, np.float64)
  assert counts.shape == prob.shape
  np.testing.assert_allclose(prob.sum(), 1.0, atol=1e-6)
  possible = prob > 0
  observed, expected = counts[possible], counts.sum() * prob[possible]
  idx = np.argsort(expected, kind="stable")
  observed, expected = observed[idx], expected[idx]
  k = int((expected < min_expected).sum())
  while 0 < k < len(expected) and expected[:k].sum() < min_expected:
    k += 1
  if k:
    observed = np.concatenate([[observed[:k].sum()], observed[k:]])
    expected = np.concatenate([[expected[:k].sum()], expected[k:]])
  dof = len(expected) - 1
  assert dof >= 1, dof
  stat = np.inf if counts[~possible].any() else float(((observed - expected) ** 2 / expected).sum())
  return stat, float(scipy.stats.chi2.ppf(1 - CHI2_ALPHA, dof)), dof


def _check_law(counts: np.ndarray, right: np.ndarray, wrong: dict[str, np.ndarray]) -> None:
  """Accept the right law, reject every wrong one, at the same (1 - CHI2_ALPHA) threshold."""
  stat, threshold, dof = _chi_square(counts, right)
  print(f"chi2 right law: {stat:.1f} (threshold {threshold:.1f}, dof {dof})")
  assert stat < threshold, f"right law rejected: X^2 {stat:.1f} >= {threshold:.1f} (dof {dof})"
  assert wrong
  for name, prob in wrong.items():
    w_stat, w_threshold, w_dof = _chi_square(counts, prob)
    print(f"chi2 wrong law {name!r}: {w_stat:.1f} (threshold {w_threshold:.1f}, dof {w_dof})")
    assert w_stat > w_threshold, f"wrong law {name!r} not rejected: X^2 {w_stat:.1f}"


def _tempered_guided64(cond, uncond, w, temperature) -> np.ndarray:
  """Float64 log-probs of the samplers' law: log softmax((uncond + w (cond - uncond)) / T)."""
  z = np.asarray(cond, np.float64)
  if w is not None:
    z = uncond + w * (z - uncond)
  return _log_softmax64(z / temperature)


def _seq_logp64(logp: np.ndarray) -> np.ndarray:
  """Per-position log-probs [27, L, V] -> log prob [27] of each of SEQS."""
  return np.take_along_axis(logp, np.asarray(SEQS)[..., None], -1)[..., 0].sum(1)


def _masked_logits64(fn, label: int) -> dict[tuple[int, ...], np.ndarray]:
  """Bidirectional logits [27, L, V] (float64) of SEQS with only `subset` revealed, per subset."""
  x = np.asarray(SEQS)
  out = {}
  for t in range(L):
    for subset in itertools.combinations(range(L), t):
      inputs = np.full_like(x, V)
      inputs[:, list(subset)] = x[:, list(subset)]
      out[subset] = np.asarray(fn(jnp.asarray(inputs), _labels(label)), np.float64)
  return out


def _order_mixture_law64(cond, uncond, w, temperature) -> np.ndarray:
  """The uniform mixture over the 6 orders of the chain rule with tempered/guided conditionals.

  cond, uncond: from _masked_logits64 (uncond may be None when w is None).
  """
  x = np.asarray(SEQS)
  rows = np.arange(len(x))
  per_order = []
  for order in ORDERS:
    logp = np.zeros(len(x))
    for t, pos in enumerate(order):
      seen = tuple(sorted(order[:t]))
      step = _tempered_guided64(cond[seen], None if uncond is None else uncond[seen], w,
                                temperature)
      logp += step[rows, pos, x[:, pos]]
    per_order.append(np.exp(logp))
  return np.mean(per_order, axis=0)


def test_raster_sampler_distribution_with_guidance():
  model, _, fn = _tiny(True, seed=6)
  params = rough_params(model, 6, scale=0.7)
  n, w = 20000, 1.5
  y = _labels(0, n)
  tokens = np.asarray(decode.raster_sample(model, params, jax.random.key(0), y,
                                           cond=_cond(y, w)))
  # Reference: per position, softmax(uncond + w (cond - uncond)) from full forwards, in float64.
  cond = np.asarray(fn(SEQS, _labels(0)), np.float64)
  uncond = np.asarray(fn(SEQS, _labels(C)), np.float64)
  logp = _log_softmax64(uncond + w * (cond - uncond))
  prob = np.exp(np.take_along_axis(logp, np.asarray(SEQS)[..., None], -1)[..., 0].sum(1))
  _assert_matches(_empirical(tokens), prob, n)


def test_order_agnostic_sampler_distribution():
  model, params, fn = _tiny(False, seed=8)
  n = 20000
  y = _labels(1, n)
  # One position per step in a random order per example: the uniform mixture over orders.
  plan = orders.random_plan(jax.random.key(1), n, L, k=1)
  tokens = np.asarray(decode.order_agnostic_sample(model, params, jax.random.key(2), y, plan))
  mixture = np.mean([np.exp(_order_logp64(fn, _labels(1), o)) for o in ORDERS], axis=0)
  _assert_matches(_empirical(tokens), mixture, n)
  # All positions in one step: independent draws from the fully masked marginals.
  one_step = np.asarray(decode.order_agnostic_sample(
      model, params, jax.random.key(3), y, orders.chunk_plan(L, L)))
  logp = _log_softmax64(fn(jnp.full((1, L), V, jnp.int32), _labels(1, 1)))[0]
  product = np.exp(np.array([logp[np.arange(L), s].sum() for s in np.asarray(SEQS)]))
  _assert_matches(_empirical(one_step), product, n)


@pytest.mark.parametrize("temperature,w,negative",
                         [(0.6, None, False), (1.7, None, False), (1.7, 2.5, False),
                          (0.6, 2.5, True)])
def test_raster_sampler_chi_square_temperature_and_guidance(temperature, w, negative):
  """Raster (KV cache) law: per position softmax((uncond + w (cond - uncond)) / T) along the
  chain, from full forwards in float64; the unconditional stream reads neg_y when given."""
  model, params, fn = _tiny(True, seed=6)
  n, label, neg = 20000, 0, 1
  neg_y = _labels(neg, n) if negative else None
  y = _labels(label, n)
  tokens = np.asarray(decode.raster_sample(model, params, jax.random.key(11), y,
                                           temperature=temperature, cond=_cond(y, w, neg_y)))
  logits = {c: np.asarray(fn(SEQS, _labels(c)), np.float64) for c in range(C + 1)}
  uncond = neg if negative else C

  def law(w, temperature, uncond=uncond):
    return np.exp(_seq_logp64(_tempered_guided64(logits[label], logits[uncond], w, temperature)))

  right = law(w, temperature)
  wrong = {"logits * T": law(w, 1 / temperature)}
  if w is not None:
    wrong["cond/uncond swapped"] = law(1 - w, temperature)
    wrong["uncond + (cond - uncond) / w"] = law(1 / w, temperature)
    wrong["cond + w (cond - uncond)"] = law(w + 1, temperature)  # = uncond + (w+1) (cond-uncond)
  if negative:
    wrong["null label instead of neg_y"] = law(w, temperature, C)
  # Observed X^2 (key 11; thresholds 42.6-61.7 for dof 14-26 after pooling):
  #   T=0.6:             right 15.5; logits*T 2.6e4
  #   T=1.7:             right 22.2; logits*T 4.8e5
  #   T=1.7, w=2.5:      right 30.5; logits*T 4.6e5, swapped 1.5e4, 1/w 3.7e3, cond+w(..) 910
  #   T=0.6, w=2.5, neg: right 16.7; logits*T 2.2e4, swapped 2.6e5, 1/w 1.6e4, cond+w(..) 2.7e3,
  #                      null label 5.3e3
  # With `* temperature` in the library's _draw the right-law X^2 is 2.8e4-3.8e5 (and the
  # samples fit "logits * T": 16-34); with `cond + w (cond - uncond)` in _guide it is 838
  # (T=1.7) and 6.0e3 (neg), the samples fitting "cond + w (cond - uncond)" (26, 16).
  _check_law(_counts(tokens), right, wrong)
  _assert_matches(_empirical(tokens), right, n)


@pytest.mark.parametrize("temperature,w", [(0.6, None), (1.7, 2.5)])
def test_order_agnostic_sampler_chi_square_temperature_and_guidance(temperature, w):
  """k = 1 random plans: the uniform mixture over the 6 orders of the chain rule with
  conditionals softmax((uncond + w (cond - uncond)) / T) from raw masked model calls."""
  model, params, fn = _tiny(False, seed=8)
  n, label = 20000, 1
  plan = orders.random_plan(jax.random.key(12), n, L, k=1)  # a random order per example
  tokens = np.asarray(decode.order_agnostic_sample(
      model, params, jax.random.key(13), _labels(label, n), plan, temperature=temperature,
      cond=_cond(_labels(label, n), w)))
  cond = _masked_logits64(fn, label)
  uncond = None if w is None else _masked_logits64(fn, C)
  # The helper at T = 1 without guidance is the plain mixture of the chain-rule laws.
  np.testing.assert_allclose(
      _order_mixture_law64(cond, None, None, 1.0),
      np.mean([np.exp(_order_logp64(fn, _labels(label), o)) for o in ORDERS], axis=0),
      rtol=1e-9)
  right = _order_mixture_law64(cond, uncond, w, temperature)
  wrong = {"logits * T": _order_mixture_law64(cond, uncond, w, 1 / temperature),
           "T ignored": _order_mixture_law64(cond, uncond, w, 1.0)}
  if w is not None:
    wrong["cond/uncond swapped"] = _order_mixture_law64(cond, uncond, 1 - w, temperature)
    wrong["uncond + (cond - uncond) / w"] = _order_mixture_law64(cond, uncond, 1 / w,
                                                                 temperature)
    wrong["cond + w (cond - uncond)"] = _order_mixture_law64(cond, uncond, w + 1, temperature)
  # Observed X^2 (keys 12, 13; thresholds 50.8-61.7 for dof 19-26):
  #   T=0.6:        right 24.6; logits*T 2.8e4, T ignored 7.2e3
  #   T=1.7, w=2.5: right 14.4; logits*T 1.4e5, T ignored 8.2e3, swapped 2.2e4, 1/w 5.1e3,
  #                 cond+w(..) 1.3e3
  # With `* temperature` in _draw the right-law X^2 is 1.5e5 / 2.6e4 (samples fit "logits * T":
  # 22, 23); with `cond + w (cond - uncond)` in _guide it is 1.1e3 (samples fit that law: 21).
  _check_law(_counts(tokens), right, wrong)
  _assert_matches(_empirical(tokens), right, n)


def test_order_agnostic_one_step_chi_square_temperature():
  """All positions in one step: independent draws from the tempered fully-masked marginals."""
  model, params, fn = _tiny(False, seed=8)
  n, temperature = 20000, 0.6
  # chunk_plan(L, L) padded with two empty steps: the same law, and the [n, L, L] plan shape of
  # the k = 1 test, so the sampler's compiled program is reused (saves ~4 s of compilation).
  plan = np.concatenate([np.asarray(orders.chunk_plan(L, L)), np.zeros((L - 1, L), bool)])
  tokens = np.asarray(decode.order_agnostic_sample(
      model, params, jax.random.key(14), _labels(1, n), plan, temperature=temperature))
  cond = _masked_logits64(fn, 1)
  masked = cond[()]  # fully masked: every row the same marginals

  def product(temperature):
    return np.exp(_seq_logp64(_tempered_guided64(masked, None, None, temperature)))

  right = product(temperature)
  # Observed X^2 (key 14; threshold 52.4): right 28.6; logits*T 2.7e4, T ignored 7.4e3, order
  # mixture 1.4e3. With `* temperature` in _draw: 1.4e5 against the right law.
  _check_law(_counts(tokens), right, {
      "logits * T": product(1 / temperature), "T ignored": product(1.0),
      "order mixture (not one step)": _order_mixture_law64(cond, None, None, temperature)})
  _assert_matches(_empirical(tokens), right, n)


def test_inpainting_keeps_known_tokens():
  model = Transformer(vocab_size=5, seq_len=12, num_classes=C, width=32, depth=2, heads=4,
                      causal=False)
  params = rough_params(model, 2)
  known = np.zeros((4, 12), bool)
  known[:, ::3] = True
  known_tokens = np.full((4, 12), 4, np.int32)
  y = jnp.array([0, 1, 2, 0])
  plan = plans.inpainting_plan(jax.random.key(0), known, k=3)
  out = np.asarray(decode.order_agnostic_sample(
      model, params, jax.random.key(1), y, plan, cond=_cond(y, 1.0), known_mask=known,
      known_tokens=known_tokens))
  np.testing.assert_array_equal(out[known], 4)
  assert ((out >= 0) & (out < 5)).all()
  assert (out[~known] != 4).any()
  with pytest.raises(ValueError, match="plan"):  # the plan also reveals known positions
    decode.order_agnostic_sample(model, params, jax.random.key(1), y,
                                   orders.chunk_plan(12, 4), known_mask=known,
                                   known_tokens=known_tokens)


# ----------------------------------------------------------------------------- processes


def _process(cls, length=64, p_uncond=0.1, **model_kw):
  """A process of class cls with its injected transformer (causal for raster AR)."""
  model = Transformer(vocab_size=17, seq_len=length, num_classes=10,
                      causal=cls is RasterAR, **model_kw)
  side = math.isqrt(length)
  return cls(model, p_uncond=p_uncond, data_shape=(side, side, 1))


def adam_steps(process, params, batch, steps: int = 40, learning_rate: float = 1e-2):
  """`steps` Adam updates of `process.loss` on one fixed batch (key i at step i)."""
  opt = optax.adam(learning_rate)

  @jax.jit
  def step(params, state, key):
    grads = jax.grad(lambda p: process.loss(p, batch, key)[0])(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for i in range(steps):
    params, state = step(params, state, jax.random.key(i))
  return params


def _digit_batch(n: int = 32, length: int = 64):
  rng = np.random.default_rng(0)
  y = rng.integers(0, 10, n).astype(np.int32)
  side = int(math.isqrt(length))
  # Class-dependent stripes plus noise: learnable structure.
  base = (np.arange(length)[None] % side + y[:, None]) % 17
  x = np.where(rng.random((n, length)) < 0.1, rng.integers(0, 17, (n, length)), base)
  return {"x": jnp.asarray(x.reshape(n, side, side, 1), jnp.int32), "y": jnp.asarray(y)}


@pytest.mark.parametrize("cls", [RasterAR, OrderAgnosticAR])
def test_process_loss_metrics_and_training(cls):
  proc = _process(cls, p_uncond=0.2, width=32, depth=1, heads=2, dropout=0.1)
  batch = _digit_batch()
  params = proc.init_params(jax.random.key(0), batch)
  loss_fn = jax.jit(proc.loss, static_argnames="train")
  loss, metrics = loss_fn(params, batch, jax.random.key(1), train=False)
  nll = metrics["nll" if cls is RasterAR else "bound"]
  np.testing.assert_allclose(loss, nll / 64, rtol=1e-6)
  np.testing.assert_allclose(metrics["bpd" if cls is RasterAR else "bound_bpd"],
                             nll / (64 * math.log(2)), rtol=1e-6)
  assert abs(float(loss) - math.log(17)) < 1.0  # near uniform at init
  params = adam_steps(proc, params, batch)
  after, _ = loss_fn(params, batch, jax.random.key(1), train=False)
  assert float(after) < float(loss) - 0.5


def test_label_dropping():
  proc = _process(RasterAR, p_uncond=1.0, width=16, depth=1, heads=2)
  batch = _digit_batch(8)
  params = rough_params(proc.model, 1, scale=0.3)
  loss_fn = jax.jit(lambda batch, train: proc.loss(params, batch, jax.random.key(1), train)[0],
                    static_argnums=1)
  dropped = loss_fn(batch, True)
  null = {"x": batch["x"], "y": jnp.full((8,), 10, jnp.int32)}
  np.testing.assert_allclose(dropped, loss_fn(null, False), rtol=1e-6)
  kept = loss_fn(batch, False)
  assert abs(float(kept) - float(dropped)) > 1e-4
  with pytest.raises(ValueError, match="p_uncond"):
    RasterAR(proc.model, p_uncond=1.5)
  with pytest.raises(ValueError, match="causal=True"):  # a bidirectional model for raster AR
    RasterAR(proc.model.clone(causal=False))
  with pytest.raises(ValueError, match="data_shape"):
    RasterAR(proc.model, data_shape=(7, 7, 1))
  with pytest.raises(ValueError, match="seq_len"):
    proc.loss(params, {"x": jnp.zeros((2, 63), jnp.int32), "y": jnp.zeros(2, jnp.int32)},
              jax.random.key(0))


def test_raster_process_works_at_784_tokens():
  batch = _digit_batch(2, 784)
  raster = _process(RasterAR, length=784, width=16, depth=1, heads=2)
  params = raster.init_params(jax.random.key(0), batch)
  loss, metrics = jax.jit(raster.loss)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["bpd"]))
  y = jnp.array([3, 10])
  kw = dict(cond=_cond(y, 1.0, null=raster.num_classes), num_steps=40)
  a = decode.raster_sample(raster.model, params, jax.random.key(2), y, **kw)
  b = decode.raster_sample(raster.model, params, jax.random.key(2), y, use_cache=False,
                           **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (np.asarray(a)[:, 40:] == 0).all()


def test_order_agnostic_process_works_at_784_tokens():
  batch = _digit_batch(2, 784)
  y = jnp.array([3, 10])
  oa = _process(OrderAgnosticAR, length=784, width=16, depth=1, heads=2)
  params = oa.init_params(jax.random.key(0), batch)
  loss, metrics = jax.jit(oa.loss)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["bound_bpd"]))
  spec = "ardm:k=98"
  assert oa.nfe(spec) == 8  # 8 parallel steps
  out = np.asarray(oa.sample(params, jax.random.key(3), y, spec))
  assert out.shape == (2, 28, 28, 1) and out.dtype == np.uint8 and (out < 17).all()


def test_ardm_specs_follow_their_plans():
  """`ardm:k=K:order=contiguous` decodes raster chunks of K; `ardm:k=K` random positions."""
  proc = _process(OrderAgnosticAR, length=16, width=16, depth=1, heads=2)
  params = rough_params(proc.model, 3, scale=0.7)
  y = jnp.array([0, 1, 2, 10])
  key = jax.random.key(4)
  keys = jax.random.split(key, 4)
  chunks = decode.order_agnostic_sample(proc.model, params, keys, y, orders.chunk_plan(16, 4))
  contiguous = proc.sample(params, key, y, "ardm:k=4:order=contiguous", mesh=None)
  np.testing.assert_array_equal(np.asarray(contiguous).reshape(4, 16), np.asarray(chunks))
  random = proc.sample(params, key, y, "ardm:k=4")
  assert (np.asarray(random) != np.asarray(contiguous)).any()
  assert proc.nfe("ardm:k=4") == proc.nfe("ardm:k=4:order=contiguous") == 4
  with pytest.raises(ValueError, match="order must be random or contiguous"):
    proc.nfe("ardm:k=4:order=spiral")
  with pytest.raises(ValueError, match="resolve_dp"):
    proc.sample(params, key, y, "ardm:dp=2")


def test_confidence_spec_runs_the_confidence_decoder_on_the_model():
  """`confidence:S` on an ARDM model equals `confidence_decode` with the model as the logits
  callback (guided: the combined streams); its options are checked by name."""
  from ardiff.processes import randomness
  from ardiff.processes.autoregressive.confidence import confidence_decode, reveal_schedule

  proc = _process(OrderAgnosticAR, length=16, width=16, depth=1, heads=2)
  params = rough_params(proc.model, 3, scale=0.7)
  y = jnp.array([0, 1, 2, 10])
  key = jax.random.key(4)
  keys = randomness.example_keys(key, 4)
  for spec, w, temperature in [("confidence:5", None, 1.0),
                               ("confidence:3:temperature=0", 2.0, 0.0)]:
    cond = _cond(y, w, null=proc.num_classes)
    ref = confidence_decode(lambda t: decode.model_call(proc.model, params, t, cond, y), keys,
                            jnp.full((4, 16), proc.mask_id, jnp.int32),
                            reveal_schedule(16, int(spec.split(":")[1])), mask_id=proc.mask_id,
                            temperature=temperature)
    guidance = None if w is None else Guidance(w)
    got = proc.sample(params, key, y, spec, guidance=guidance)
    np.testing.assert_array_equal(np.asarray(got).reshape(4, 16), np.asarray(ref))
  assert proc.nfe("confidence:16") == 16 and proc.nfe("confidence:4:schedule=uniform") == 4
  for bad, message in [("confidence", "needs a step count"),
                       ("confidence:17", "steps must be an integer in 1..16"),
                       ("confidence:4:schedule=linear", "schedule must be one of"),
                       ("confidence:4:noise=-1", "noise must be a number >= 0"),
                       ("confidence:4:temperature=-1", "temperature must be a number >= 0"),
                       ("ardm:k=4:temperature=0", "temperature must be a number > 0")]:
    with pytest.raises(ValueError, match=message):
      proc.nfe(bad)
