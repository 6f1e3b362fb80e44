"""Confidence decoding (`ardiff.processes.autoregressive.confidence`) on toy logits callbacks,
against a brute-force NumPy decoder and the categorical law of one position."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ardiff.processes import categorical, randomness
from ardiff.processes.autoregressive.confidence import (confidence_decode, confidence_history,
                                                    reveal_schedule)

V, L, MASK = 5, 16, 5


def test_cosine_schedule_is_the_closed_form_and_uniform_is_even():
  # 64 positions in 8 steps: hidden after step s = floor(64 cos(pi/2 (s+1)/8)), no step empty.
  hidden = [64] + [math.floor(64 * math.cos(math.pi / 2 * (s + 1) / 8)) for s in range(8)]
  hidden[-1] = 0
  assert reveal_schedule(64, 8) == tuple(hidden[s] - hidden[s + 1] for s in range(8))
  assert reveal_schedule(64, 8) == (2, 3, 6, 8, 10, 11, 12, 12)
  assert reveal_schedule(64, 8, "uniform") == (8,) * 8
  assert reveal_schedule(10, 4, "uniform") == (2, 2, 3, 3)
  for length, steps in [(16, 16), (10, 7), (64, 1), (784, 12), (5, 4)]:
    for schedule in ("cosine", "uniform"):
      sizes = reveal_schedule(length, steps, schedule)
      assert len(sizes) == steps and sum(sizes) == length and min(sizes) >= 1
  with pytest.raises(ValueError, match="steps must be an integer in 1..16"):
    reveal_schedule(16, 17)
  with pytest.raises(ValueError, match="schedule must be one of"):
    reveal_schedule(16, 4, "linear")


def _table(seed=0, batch=3):
  return np.random.default_rng(seed).normal(0, 1.5, (batch, L, V)).astype(np.float32)


def _feedback_logits(base):
  """Logits that depend on the revealed tokens: value (sum of revealed tokens mod V) gains 2."""
  def fn(tokens):
    revealed = jnp.where(tokens == MASK, 0, tokens)
    bonus = jax.nn.one_hot(revealed.sum(axis=1) % V, V) * 2.0  # [B, V]
    return jnp.asarray(base) + bonus[:, None, :]
  return fn


def _brute_force_greedy(base, sizes, tokens):
  """The greedy decoder written out: each step, argmax tokens at every hidden position, reveal
  the n most probable (ties: lower position)."""
  tokens = tokens.copy()
  for n in sizes:
    for b in range(tokens.shape[0]):
      revealed = np.where(tokens[b] == MASK, 0, tokens[b])
      logits = base[b].astype(np.float64).copy()
      logits[:, revealed.sum() % V] += 2.0
      logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
      hidden = np.flatnonzero(tokens[b] == MASK)
      best = sorted(hidden, key=lambda i: (-logp[i].max(), i))[:n]
      tokens[b, best] = logp[best].argmax(-1)
  return tokens


@pytest.mark.parametrize("schedule,steps", [("cosine", 5), ("uniform", 16), ("cosine", 1)])
def test_greedy_decoding_equals_the_brute_force_decoder_and_ignores_the_key(schedule, steps):
  base = _table()
  sizes = reveal_schedule(L, steps, schedule)
  start = np.full((3, L), MASK, np.int32)
  fn = _feedback_logits(base)
  out = [np.asarray(confidence_decode(fn, randomness.example_keys(jax.random.key(k), 3), start,
                                      sizes, mask_id=MASK, temperature=0.0))
         for k in (0, 1)]
  np.testing.assert_array_equal(out[0], out[1])  # greedy: no randomness left
  np.testing.assert_array_equal(out[0], _brute_force_greedy(base, sizes, start))


def test_revealed_tokens_never_change_and_each_step_reveals_its_count():
  base = _table(1, batch=4)
  start = np.full((4, L), MASK, np.int32)
  start[:, [0, 7]] = [[1, 2]] * 4  # known tokens (inpainting): never changed
  sizes = reveal_schedule(L - 2, 4)
  tokens, history = confidence_history(
      _feedback_logits(base), randomness.example_keys(jax.random.key(3), 4), start, sizes,
      mask_id=MASK, temperature=1.0, noise=2.0)
  history = np.concatenate([start[None], np.asarray(history)])  # [S + 1, B, L]
  revealed = (history != MASK).sum(axis=2)  # [S + 1, B]
  np.testing.assert_array_equal(revealed, np.broadcast_to(
      2 + np.concatenate([[0], np.cumsum(sizes)])[:, None], revealed.shape))
  for s in range(1, len(history)):
    was = history[s - 1] != MASK
    np.testing.assert_array_equal(history[s][was], history[s - 1][was])
  np.testing.assert_array_equal(np.asarray(tokens)[:, [0, 7]], [[1, 2]] * 4)
  assert np.asarray(tokens).max() < V
  with pytest.raises(ValueError, match="sizes sum to 16 but the examples hide \\[14\\]"):
    confidence_decode(_feedback_logits(base), randomness.example_keys(jax.random.key(3), 4),
                      start, reveal_schedule(L, 4), mask_id=MASK)


def test_noise_randomises_the_reveal_order_and_zero_noise_follows_the_confidences():
  base = np.broadcast_to(_table(2, batch=1), (64, L, V))  # one model output, 64 examples
  fn = lambda tokens: jnp.asarray(base)  # noqa: E731 - logits independent of the tokens
  start = np.full((64, L), MASK, np.int32)
  keys = randomness.example_keys(jax.random.key(4), 64)
  first = {}
  for noise in (0.0, 5.0):
    _, history = confidence_history(fn, keys, start, (4, 12), mask_id=MASK, temperature=0.0,
                                    noise=noise)
    first[noise] = {tuple(np.flatnonzero(row != MASK)) for row in np.asarray(history[0])}
  logp = jax.nn.log_softmax(base[0], axis=-1).max(axis=-1)
  assert first[0.0] == {tuple(sorted(np.argsort(-np.asarray(logp), kind="stable")[:4]))}
  assert len(first[5.0]) > 10


def test_candidates_follow_the_tempered_categorical():
  """One hidden position, one step: the token is drawn from softmax(logits / T)."""
  logits = np.array([1.0, 0.0, -1.0, 0.5, 2.0], np.float32)
  n = 4000
  fn = lambda tokens: jnp.broadcast_to(jnp.asarray(logits), (tokens.shape[0], 1, V))  # noqa: E731
  for temperature in (1.0, 0.5):
    out = np.asarray(confidence_decode(fn, randomness.example_keys(jax.random.key(5), n),
                                       np.full((n, 1), MASK, np.int32), (1,), mask_id=MASK,
                                       temperature=temperature))[:, 0]
    z = logits.astype(np.float64) / temperature
    p = np.exp(z) / np.exp(z).sum()
    counts = np.bincount(out, minlength=V)
    assert scipy.stats.chisquare(counts, n * p).pvalue > 1e-3, (temperature, counts, n * p)
    wrong = np.exp(logits.astype(np.float64))  # the untempered law: rejected at T = 0.5
    wrong /= wrong.sum()
    if temperature != 1.0:
      assert scipy.stats.chisquare(counts, n * wrong).pvalue < 1e-6


def test_sampled_candidates_are_revealed_by_the_models_own_probability():
  """temperature 0.5, no noise, logits independent of the tokens: step 0 reveals the n drawn
  candidates with the highest untempered log-probability (the draws: `categorical.draw` with the
  step's keys, as every sampler draws)."""
  base = _table(6, batch=8)
  keys = randomness.example_keys(jax.random.key(7), 8)
  tokens, history = confidence_history(lambda t: jnp.asarray(base), keys,
                                       np.full((8, L), MASK, np.int32), (5, 11), mask_id=MASK,
                                       temperature=0.5)
  z = np.asarray(categorical.draw(randomness.step_keys(keys, 0), jnp.asarray(base), 0.5))
  logp = np.asarray(jax.nn.log_softmax(jnp.asarray(base), axis=-1))
  conf = np.take_along_axis(logp, z[..., None], axis=-1)[..., 0]
  for b in range(8):
    top = np.argsort(-conf[b], kind="stable")[:5]
    assert set(np.flatnonzero(np.asarray(history[0][b]) != MASK)) == set(top), b
    np.testing.assert_array_equal(np.asarray(tokens)[b, top], z[b, top])


def _order_law(conf, scales):
  """Exact law of the reveal order when step s reveals one position, the argmax of
  conf + scales[s] * Gumbel over the hidden ones: by the Gumbel-max trick, a softmax of
  conf / scales[s] over what is still hidden (scale 0: the argmax), enumerated over orders."""
  law = {}
  for order in itertools.permutations(range(len(conf))):
    p, hidden = 1.0, list(range(len(conf)))
    for pos, scale in zip(order, scales):
      c = np.array([conf[i] for i in hidden])
      if scale == 0:
        p *= float(conf[pos] == c.max())
      else:
        w = np.exp((c - c.max()) / scale)
        p *= w[hidden.index(pos)] / w.sum()
      hidden.remove(pos)
    law[order] = p
  return law


def test_noise_is_annealed_from_large_to_zero_in_the_law_of_the_reveal_order():
  """Four positions revealed one per step (S = 4), greedy candidates, noise c = 2: step s adds
  Gumbel noise scaled by c (1 - (s + 1) / S) = 1.5, 1, 0.5, 0, so the order has the law of
  successive softmaxes of the confidences at those temperatures (enumerated over the 24 orders),
  by chi-square; the reversed schedule c (s + 1) / S (0.5, 1, 1.5) is rejected. At S = 2 the
  two schedules agree at step 0, so only S >= 3 tells them apart."""
  length, n, c = 4, 6000, 2.0
  base = np.random.default_rng(8).normal(0, 1.0, (1, length, V)).astype(np.float32)
  conf = np.asarray(jax.nn.log_softmax(jnp.asarray(base[0]), axis=-1).max(axis=-1), np.float64)
  start = np.full((n, length), MASK, np.int32)
  _, history = confidence_history(lambda t: jnp.broadcast_to(jnp.asarray(base), (*t.shape, V)),
                                  randomness.example_keys(jax.random.key(9), n), start,
                                  (1,) * length, mask_id=MASK, temperature=0.0, noise=c)
  revealed_at = (np.asarray(history) == MASK).sum(axis=0)  # [n, L]: steps each stayed hidden
  orders = [tuple(np.argsort(row)) for row in revealed_at]
  steps = np.arange(length)
  for scales, accept in ((c * (1 - (steps + 1) / length), True), (c * (steps + 1) / length, False)):
    law = _order_law(conf, scales)
    cells = [o for o in law if law[o] > 0]
    counts = np.array([orders.count(o) for o in cells])
    assert counts.sum() == n, "an order the law gives probability 0 was drawn"
    expected = n * np.array([law[o] for o in cells])
    pvalue = scipy.stats.chisquare(counts, expected / expected.sum() * n).pvalue
    assert (pvalue > 1e-3) if accept else (pvalue < 1e-6), (scales, pvalue)
