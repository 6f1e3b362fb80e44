"""Raster order with a bidirectional predictor (`bidirectional_raster`), against brute force.

References enumerate every sequence of a 3-position, 3-value model (27 sequences) and build
the raster chain rule from raw model calls on hand-masked inputs, in float64.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from tests.models.test_transformer import rough_params

from ardiff.metrics import held_out
from ardiff.models.transformer import Transformer
from ardiff.processes.autoregressive import bidirectional_raster
from ardiff.processes.autoregressive.bidirectional_raster import RasterBidirectional

V, L, C = 3, 3, 2  # values, positions, classes
SEQS = np.asarray(list(itertools.product(range(V), repeat=L)), np.int32)  # [27, 3]
CHI2_ALPHA = 1e-4


def _tiny(seed: int = 0):
  model = Transformer(vocab_size=V, seq_len=L, num_classes=C, width=16, depth=2, heads=2,
                      causal=False)
  params = rough_params(model, seed, scale=0.7)
  return model, params, jax.jit(lambda t, y: model.apply(params, t, y))


def _labels(label: int, n: int = len(SEQS)) -> jax.Array:
  return jnp.full((n,), label, jnp.int32)


def _log_softmax64(z) -> np.ndarray:
  z = np.asarray(z, np.float64)
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _chain_terms64(fn, label: int, temperature: float = 1.0, order=range(L)) -> np.ndarray:
  """[27, L] float64 log p(x_{o_s} | x_{o_<s}) along `order` from raw masked model calls, where
  the hidden positions are written as the mask id V by hand."""
  rows = np.arange(len(SEQS))
  order = list(order)
  terms = np.zeros((len(SEQS), L))
  for s, pos in enumerate(order):
    inputs = np.full_like(SEQS, V)
    inputs[:, order[:s]] = SEQS[:, order[:s]]
    logp = _log_softmax64(np.asarray(fn(jnp.asarray(inputs), _labels(label)), np.float64)
                          / temperature)
    terms[:, s] = logp[rows, pos, SEQS[:, pos]]
  return terms


def test_exact_nll_is_the_brute_force_raster_chain_and_normalised():
  _, params, fn = _tiny(seed=1)
  for label in (0, C):  # a class and the null label
    want = -_chain_terms64(fn, label).sum(axis=1)
    got = np.asarray(jax.jit(lambda x, y: bidirectional_raster.exact_nll(fn, x, y, V))(
        jnp.asarray(SEQS), _labels(label)), np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The raster conditionals of any bidirectional network form a normalised law over the 27.
    np.testing.assert_allclose(np.exp(-got).sum(), 1.0, atol=1e-5)
    assert np.exp(-got).max() > 3 / len(SEQS)  # far from uniform: the checks have teeth
  # Per step, position t's prediction reads x_<t only: changing x_>=t+1 changes nothing.
  x = jnp.asarray(SEQS)
  for t in range(L - 1):
    other = x.at[:, t + 1:].set((x[:, t + 1:] + 1) % V)
    np.testing.assert_array_equal(bidirectional_raster.step_nll(fn, x, _labels(0), t, V),
                                  bidirectional_raster.step_nll(fn, other, _labels(0), t, V))
  # The process method is the same function of the parameters.
  process = RasterBidirectional(Transformer(vocab_size=V, seq_len=L, num_classes=C, width=16,
                                            depth=2, heads=2, causal=False), p_uncond=0.0)
  np.testing.assert_allclose(np.asarray(process.exact_nll(params, SEQS, _labels(0))),
                             -_chain_terms64(fn, 0).sum(axis=1), rtol=1e-5, atol=1e-5)
  # In bits per pixel, in batches (7 does not divide 27), equal to the whole-set mean.
  bpd = held_out.test_bpd(process, params, SEQS, np.zeros(len(SEQS), np.int32), jax.random.key(0),
                         batch_size=7)
  np.testing.assert_allclose(bpd, -_chain_terms64(fn, 0).sum(1).mean() / (L * math.log(2)),
                             rtol=1e-5)


def test_one_step_loss_is_unbiased_with_t_uniform():
  _, _, fn = _tiny(seed=2)
  terms = -_chain_terms64(fn, 1)  # [27, L]: -log p(x_t | x_<t) by brute force
  exact = terms.sum(axis=1)
  # Enumerating t: E_t[L * step_nll(t)] = sum_t step_nll(t) = the exact NLL.
  per_t = np.stack([np.asarray(bidirectional_raster.step_nll(fn, jnp.asarray(SEQS), _labels(1),
                                                             t, V), np.float64)
                    for t in range(L)], axis=1)
  np.testing.assert_allclose(per_t, terms, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose((L * per_t).mean(axis=1), exact, rtol=1e-5)
  # Monte Carlo: each row draws its own t. Identify t from the value (L distinct values per
  # sequence), check t ~ U{0..L-1} by chi-square, and the mean within 5 standard errors.
  reps = 1500
  x = jnp.asarray(np.tile(SEQS, (reps, 1)))
  loss = np.asarray(jax.jit(lambda k: bidirectional_raster.one_step_loss(
      fn, x, _labels(1, len(x)), k, V))(jax.random.key(5)),
                    np.float64).reshape(reps, len(SEQS))
  candidates = L * terms  # [27, L]
  gaps = np.abs(candidates[:, :, None] - candidates[:, None, :]) + np.eye(L) * 1e9
  assert gaps.min() > 1e-3  # the values identify t
  t_drawn = np.abs(loss[:, :, None] - candidates[None]).argmin(axis=-1)  # [reps, 27]
  np.testing.assert_allclose(np.take_along_axis(candidates[None].repeat(reps, 0),
                                                t_drawn[..., None], -1)[..., 0], loss,
                             rtol=1e-4, atol=1e-4)
  counts = np.bincount(t_drawn.ravel(), minlength=L)
  assert len(counts) == L  # t never reaches L
  stat, p = scipy.stats.chisquare(counts)
  assert p > CHI2_ALPHA, (counts, stat)
  # A wrong t law (U{1..L-1}: the first pixel never trained) is far off.
  wrong = scipy.stats.chisquare(counts, np.r_[0.0, np.full(L - 1, counts.sum() / (L - 1))] + 1e-9)
  assert wrong.pvalue < CHI2_ALPHA
  var = ((candidates - exact[:, None]) ** 2).mean(axis=1)  # Var over t, per sequence
  se = math.sqrt(np.tile(var, reps).sum()) / loss.size
  assert abs(loss.mean() - exact.mean()) < 5 * se, (loss.mean(), exact.mean(), se)


def test_process_loss_is_nats_per_pixel_and_trains():
  model = Transformer(vocab_size=V, seq_len=L, num_classes=C, width=16, depth=2, heads=2,
                      causal=False)
  process = RasterBidirectional(model, p_uncond=0.0)
  params = rough_params(model, 3, scale=0.7)
  fn = jax.jit(lambda t, y: model.apply(params, t, y))
  batch = {"x": jnp.asarray(np.tile(SEQS, (40, 1))), "y": _labels(0, 40 * len(SEQS))}
  loss, metrics = process.loss(params, batch, jax.random.key(0), train=False)
  exact = -_chain_terms64(fn, 0).sum(axis=1).mean()
  # One draw of t per row over 1080 rows: the mean per-example estimate is near the exact NLL,
  # and the loss is that estimate per pixel.
  np.testing.assert_allclose(float(loss) * L, float(metrics["nll"]), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["bpd"]), float(metrics["nll"]) / (L * math.log(2)),
                             rtol=1e-6)
  assert abs(float(metrics["nll"]) - exact) < 0.1 * exact


def _counts(tokens: np.ndarray) -> np.ndarray:
  return np.bincount((tokens * V ** np.arange(L - 1, -1, -1)).sum(axis=1), minlength=V ** L)


def _chi2(counts, prob) -> tuple[float, float]:
  """Pearson X^2 (cells with expected count < 5 pooled) and the 1 - CHI2_ALPHA threshold."""
  expected = counts.sum() * prob
  small = expected < 5
  obs = np.r_[counts[~small], counts[small].sum()] if small.any() else counts
  exp = np.r_[expected[~small], expected[small].sum()] if small.any() else expected
  stat = float(((obs - exp) ** 2 / np.maximum(exp, 1e-300)).sum())
  return stat, float(scipy.stats.chi2.ppf(1 - CHI2_ALPHA, len(obs) - 1))


def test_sampling_law_is_the_models_raster_chain():
  model, params, fn = _tiny(seed=4)
  process = RasterBidirectional(model, p_uncond=0.0)
  n, label = 20000, 0
  for temperature in (1.0, 0.6):
    spec = "raster" if temperature == 1.0 else f"raster:temperature={temperature}"
    assert process.nfe(spec) == L
    tokens = np.asarray(process.sample(params, jax.random.key(7), _labels(label, n), spec))
    counts = _counts(tokens.reshape(n, L).astype(np.int64))
    law = lambda t, o=range(L): np.exp(_chain_terms64(fn, label, t, o).sum(axis=1))  # noqa
    right = law(temperature)
    np.testing.assert_allclose(right.sum(), 1.0, atol=1e-6)
    stat, threshold = _chi2(counts, right)
    assert stat < threshold, (temperature, stat, threshold)
    mixture = np.mean([law(temperature, o) for o in itertools.permutations(range(L))], axis=0)
    wrong = {"reverse raster order": law(temperature, range(L - 1, -1, -1)),
             "uniform mixture over orders (ARDM)": mixture,
             "logits * T": law(1 / temperature) if temperature != 1.0 else law(2.0)}
    for name, prob in wrong.items():
      w_stat, w_threshold = _chi2(counts, prob)
      assert w_stat > w_threshold, (temperature, name, w_stat, w_threshold)
