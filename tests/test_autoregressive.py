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
from test_transformer import rough_params

from ardiff.autoregressive import objectives, orders, sampling
from ardiff.autoregressive.processes import OrderAgnosticAR, RasterAR
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
  mc = np.asarray(jax.jit(lambda k: objectives.ardm_bound_mc(fn, x, y, k, V, num_samples=4))(
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
    plan = np.asarray(orders.inpainting_plan(key, known, k=2))
    assert plan.shape == (3, 2, 8)
    np.testing.assert_array_equal(plan.sum(axis=1) + known, np.ones((3, 8)))
  raster = np.asarray(orders.inpainting_plan(None, known, k=2))
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
    orders.inpainting_plan(None, np.array([[True, False], [True, True]]), k=1)


# ----------------------------------------------------------------------------- sampling


def _causal(length: int = 16):
  model = Transformer(vocab_size=5, seq_len=length, num_classes=C, width=32, depth=2, heads=4)
  return model, rough_params(model, 5, scale=0.4)


@pytest.mark.parametrize("guidance,negative", [(None, False), (1.5, False), (2.0, True)])
def test_kv_cache_sampler_equals_no_cache_sampler(guidance, negative):
  model, params = _causal()
  y = jnp.array([0, 1, 2, 0, 1, 2, 1, 0])  # 2 = null label
  neg_y = jnp.array([1, 0, 0, 1, 0, 1, 0, 1]) if negative else None
  kw = dict(temperature=0.8, guidance=guidance, neg_y=neg_y)
  for seed in range(2):
    a = sampling.raster_sample(model, params, jax.random.key(seed), y, **kw)
    b = sampling.raster_sample_nocache(model, params, jax.random.key(seed), y, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert len(np.unique(np.asarray(a))) > 1


def test_guidance_one_is_conditional_zero_unconditional_and_negative_label_matters():
  model, params = _causal()
  y = jnp.array([0, 1, 0, 1])
  key = jax.random.key(3)
  plain = sampling.raster_sample(model, params, key, y)
  np.testing.assert_array_equal(sampling.raster_sample(model, params, key, y, guidance=1.0), plain)
  null = jnp.full_like(y, model.num_classes)
  np.testing.assert_array_equal(sampling.raster_sample(model, params, key, y, guidance=0.0),
                                sampling.raster_sample(model, params, key, null))
  guided = sampling.raster_sample(model, params, key, y, guidance=3.0)
  negative = sampling.raster_sample(model, params, key, y, guidance=3.0, neg_y=1 - y)
  assert (np.asarray(guided) != np.asarray(negative)).any()
  with pytest.raises(ValueError, match="neg_y"):
    sampling.raster_sample(model, params, key, y, neg_y=y)
  with pytest.raises(ValueError, match="temperature"):
    sampling.raster_sample(model, params, key, y, temperature=0.0)


def _empirical(tokens: np.ndarray) -> np.ndarray:
  index = (tokens * V ** np.arange(L - 1, -1, -1)).sum(axis=1)
  return np.bincount(index, minlength=V ** L) / len(tokens)


def _assert_matches(freq: np.ndarray, prob: np.ndarray, n: int):
  se = np.sqrt(prob * (1 - prob) / n)
  np.testing.assert_allclose(prob.sum(), 1.0, atol=1e-5)
  assert (np.abs(freq - prob) < 5 * se + 1e-3).all(), np.abs(freq - prob).max()


def test_raster_sampler_distribution_with_guidance():
  model, _, fn = _tiny(True, seed=6)
  params = rough_params(model, 6, scale=0.7)
  n, w = 20000, 1.5
  y = _labels(0, n)
  tokens = np.asarray(sampling.raster_sample(model, params, jax.random.key(0), y, guidance=w))
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
  tokens = np.asarray(sampling.order_agnostic_sample(model, params, jax.random.key(2), y, plan))
  mixture = np.mean([np.exp(_order_logp64(fn, _labels(1), o)) for o in ORDERS], axis=0)
  _assert_matches(_empirical(tokens), mixture, n)
  # All positions in one step: independent draws from the fully masked marginals.
  one_step = np.asarray(sampling.order_agnostic_sample(
      model, params, jax.random.key(3), y, orders.chunk_plan(L, L)))
  logp = _log_softmax64(fn(jnp.full((1, L), V, jnp.int32), _labels(1, 1)))[0]
  product = np.exp(np.array([logp[np.arange(L), s].sum() for s in np.asarray(SEQS)]))
  _assert_matches(_empirical(one_step), product, n)


def test_inpainting_keeps_known_tokens():
  model = Transformer(vocab_size=5, seq_len=12, num_classes=C, width=32, depth=2, heads=4,
                      causal=False)
  params = rough_params(model, 2)
  known = np.zeros((4, 12), bool)
  known[:, ::3] = True
  known_tokens = np.full((4, 12), 4, np.int32)
  y = jnp.array([0, 1, 2, 0])
  plan = orders.inpainting_plan(jax.random.key(0), known, k=3)
  out = np.asarray(sampling.order_agnostic_sample(
      model, params, jax.random.key(1), y, plan, guidance=1.0, known_mask=known,
      known_tokens=known_tokens))
  np.testing.assert_array_equal(out[known], 4)
  assert ((out >= 0) & (out < 5)).all()
  assert (out[~known] != 4).any()
  with pytest.raises(ValueError, match="plan"):  # the plan also reveals known positions
    sampling.order_agnostic_sample(model, params, jax.random.key(1), y,
                                   orders.chunk_plan(12, 4), known_mask=known,
                                   known_tokens=known_tokens)


# ----------------------------------------------------------------------------- processes


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
  proc = cls(vocab_size=17, seq_len=64, num_classes=10, width=32, depth=1, heads=2,
             dropout=0.1, p_uncond=0.2)
  batch = _digit_batch()
  params = proc.init_params(jax.random.key(0), batch)
  loss_fn = jax.jit(proc.loss, static_argnames="train")
  loss, metrics = loss_fn(params, batch, jax.random.key(1), train=False)
  nll = metrics["nll" if cls is RasterAR else "bound"]
  np.testing.assert_allclose(loss, nll / 64, rtol=1e-6)
  np.testing.assert_allclose(metrics["bpd" if cls is RasterAR else "bound_bpd"],
                             nll / (64 * math.log(2)), rtol=1e-6)
  assert abs(float(loss) - math.log(17)) < 1.0  # near uniform at init
  opt = optax.adam(1e-2)

  @jax.jit
  def step(params, state, key):
    grads = jax.grad(lambda p: proc.loss(p, batch, key)[0])(params)
    updates, state = opt.update(grads, state)
    return optax.apply_updates(params, updates), state

  state = opt.init(params)
  for i in range(40):
    params, state = step(params, state, jax.random.key(i))
  after, _ = loss_fn(params, batch, jax.random.key(1), train=False)
  assert float(after) < float(loss) - 0.5


def test_label_dropping():
  proc = RasterAR(vocab_size=17, seq_len=64, num_classes=10, width=16, depth=1, heads=2,
                  p_uncond=1.0)
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
    RasterAR(vocab_size=17, seq_len=64, num_classes=10, p_uncond=1.5)
  with pytest.raises(ValueError, match="seq_len"):
    proc.loss(params, {"x": jnp.zeros((2, 63), jnp.int32), "y": jnp.zeros(2, jnp.int32)},
              jax.random.key(0))


def test_raster_process_works_at_784_tokens():
  batch = _digit_batch(2, 784)
  raster = RasterAR(vocab_size=17, seq_len=784, num_classes=10, width=16, depth=1, heads=2)
  params = raster.init_params(jax.random.key(0), batch)
  loss, metrics = jax.jit(raster.loss)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["bpd"]))
  y = jnp.array([3, 10])
  kw = dict(guidance=1.0, num_steps=40)
  a = sampling.raster_sample(raster.model, params, jax.random.key(2), y, **kw)
  b = sampling.raster_sample_nocache(raster.model, params, jax.random.key(2), y, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (np.asarray(a)[:, 40:] == 0).all()


def test_order_agnostic_process_works_at_784_tokens():
  batch = _digit_batch(2, 784)
  y = jnp.array([3, 10])
  oa = OrderAgnosticAR(vocab_size=17, seq_len=784, num_classes=10, width=16, depth=1, heads=2)
  params = oa.init_params(jax.random.key(0), batch)
  loss, metrics = jax.jit(oa.loss)(params, batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["bound_bpd"]))
  out = np.asarray(oa.sample(params, jax.random.key(3), y, k=98))  # 8 parallel steps
  assert out.shape == (2, 784) and ((out >= 0) & (out < 17)).all()
