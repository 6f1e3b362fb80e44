"""Tests for the causal / bidirectional transformer and its explicit KV-cache decode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.kernels import decode_attention as decode_kernels
from ardiff.models.transformer import Transformer, init_cache


def _model(causal: bool, length: int = 10, vocab: int = 5, **kw) -> Transformer:
  return Transformer(vocab_size=vocab, seq_len=length, num_classes=3, width=32, depth=2, heads=4,
                     causal=causal, **kw)


def rough_params(model: Transformer, seed: int = 0, scale: float = 0.5):
  """Params with every leaf drawn from N(0, scale^2) (numpy, no compile): far from uniform."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, model.seq_len), jnp.int32),
                          jnp.zeros((1,), jnp.int32))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), jnp.float32), shapes)


def test_shapes_and_mask_token():
  for causal in (True, False):
    model = _model(causal)
    params = rough_params(model)
    x = jnp.zeros((4, 10), jnp.int32) + (0 if causal else model.mask_id)
    out = jax.jit(model.apply)(params, x, jnp.array([0, 1, 2, 3]))
    assert out.shape == (4, 10, 5)
    assert np.isfinite(np.asarray(out)).all()
  with pytest.raises(ValueError, match="seq_len"):
    model.apply(params, jnp.zeros((2, 9), jnp.int32), jnp.zeros((2,), jnp.int32))


def test_causality():
  model = _model(True)
  params = rough_params(model)
  apply = jax.jit(model.apply)
  x = jax.random.randint(jax.random.key(3), (2, 10), 0, 5)
  y = jnp.array([1, 3])
  base = np.asarray(apply(params, x, y))
  for j in range(10):
    changed = np.asarray(apply(params, x.at[:, j].set((x[:, j] + 1) % 5), y))
    np.testing.assert_allclose(changed[:, :j + 1], base[:, :j + 1], atol=1e-6)
    if j < 9:  # the next position reads x_j
      assert np.abs(changed[:, j + 1] - base[:, j + 1]).max() > 1e-3
  # Position 0 depends on the label only.
  other = np.asarray(apply(params, x, jnp.array([0, 0])))
  assert np.abs(other[:, 0] - base[:, 0]).max() > 1e-3


def test_bidirectional_sees_everything():
  model = _model(False)
  params = rough_params(model)
  x = jax.random.randint(jax.random.key(3), (2, 10), 0, 6)
  y = jnp.array([1, 2])
  apply = jax.jit(model.apply)
  base = np.asarray(apply(params, x, y))
  changed = np.asarray(apply(params, x.at[:, 7].set((x[:, 7] + 1) % 6), y))
  assert (np.abs(changed - base).max(axis=(0, 2)) > 1e-4).all()


def test_decode_step_matches_full_forward():
  model = _model(True, length=12)
  params = rough_params(model)
  x = jax.random.randint(jax.random.key(5), (3, 12), 0, 5)
  y = jnp.array([0, 2, 3])  # 3 = null label
  full = np.asarray(jax.jit(model.apply)(params, x, y))
  step = jax.jit(lambda prev, pos, cache: model.apply(params, prev, pos, cache, y,
                                                      method=Transformer.decode_step))
  cache = init_cache(model, 3)
  assert len(cache["k"]) == 2 and cache["k"][0].shape == (3, 4, 16, 8)  # [B, N, C, H]
  prev = jnp.zeros((3,), jnp.int32)
  for pos in range(12):
    logits, cache = step(prev, jnp.int32(pos), cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, pos], atol=2e-5, rtol=1e-5)
    prev = x[:, pos]
  # The cache holds each layer's keys at every position (and nothing past them).
  filled = np.abs(np.asarray(cache["k"][1])).sum(axis=-1) > 0
  assert filled[:, :, :12].all() and not filled[:, :, 12:].any()


def test_decode_step_needs_causal():
  model = _model(False)
  params = rough_params(model)
  with pytest.raises(ValueError, match="causal"):
    model.apply(params, jnp.zeros((1,), jnp.int32), 0, init_cache(model, 1),
                jnp.zeros((1,), jnp.int32), method=Transformer.decode_step)


def test_dropout_only_in_training():
  model = _model(True, dropout=0.5)
  params = rough_params(model)
  x = jnp.ones((2, 10), jnp.int32)
  y = jnp.array([0, 1])
  apply = jax.jit(model.apply, static_argnames="train")
  a = apply(params, x, y, train=True, rngs={"dropout": jax.random.key(0)})
  b = apply(params, x, y, train=True, rngs={"dropout": jax.random.key(1)})
  assert np.abs(np.asarray(a - b)).max() > 1e-3
  np.testing.assert_array_equal(np.asarray(apply(params, x, y)),
                                np.asarray(apply(params, x, y, train=False)))


@pytest.mark.parametrize("causal", [True, False])
def test_remat_gives_the_same_gradients_and_decodes(causal):
  """remat recomputes block activations in the backward pass: same loss and gradients."""
  plain = _model(causal, dropout=0.1)
  remat = plain.clone(remat=True)
  params = rough_params(plain)
  x = jax.random.randint(jax.random.key(1), (3, 10), 0, 5)
  y = jnp.array([0, 1, 3])

  def loss(model, p):
    logits = model.apply(p, x, y, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p)))(params)
                        for m in (plain, remat))
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-7)
  if causal:  # the cached decoding path still works through the remat-wrapped blocks
    logits, _ = remat.apply(params, x[:, 0], 0, init_cache(remat, 3), y,
                            method=remat.decode_step)
    np.testing.assert_allclose(logits, plain.apply(params, x, y)[:, 0], rtol=1e-5, atol=1e-6)


def _softmax_attention64(q, k, v, allowed):
  """float64 reference: q [B, T, N, H], k, v [B, S, N, H], allowed [T, S] -> [B, T, N, H]."""
  scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(allowed, scores, -np.inf)
  weights = np.exp(scores - scores.max(axis=-1, keepdims=True))
  weights /= weights.sum(axis=-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", weights, v)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_is_softmax_attention_in_float64(monkeypatch, causal):
  """Every attention call (the full forward, and a decode step over a cache whose unfilled
  slots hold garbage) equals float64 softmax attention with the mask the position implies."""
  calls = []
  real = jax.nn.dot_product_attention

  def spy(q, k, v, **kw):
    out = real(q, k, v, **kw)
    calls.append([np.asarray(a, np.float64) for a in (q, k, v, out)])
    return out

  length = 7
  model = _model(causal, length=length)
  params = rough_params(model)
  monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
  x = jax.random.randint(jax.random.key(1), (2, length), 0, 5)
  y = jnp.array([1, 3])
  model.apply(params, x, y)  # eager: the spy sees concrete arrays
  assert len(calls) == model.depth
  for q, k, v, out in calls:
    t = q.shape[1]  # bidirectional: the class token and the L tokens
    assert t == (length if causal else length + 1)
    allowed = np.tril(np.ones((t, t), bool)) if causal else np.ones((t, t), bool)
    np.testing.assert_allclose(out, _softmax_attention64(q, k, v, allowed), atol=2e-6)
  if not causal:
    return
  calls.clear()
  pos = 3
  slots = init_cache(model, 2)["k"][0].shape[2]
  garbage = jax.random.normal(jax.random.key(2), (2, 4, slots, 8)) * 10  # [B, N, C, H]
  cache = {"k": (garbage,) * model.depth, "v": (garbage,) * model.depth}
  real_decode = decode_kernels.xla_decode

  def decode_spy(q, k, v, filled):
    out = real_decode(q, k, v, filled)
    calls.append([np.asarray(a, np.float64) for a in (q, k, v, filled, out)])
    return out

  monkeypatch.setattr(decode_kernels, "xla_decode", decode_spy)
  model.apply(params, x[:, pos - 1], jnp.int32(pos), cache, y, method=Transformer.decode_step)
  assert len(calls) == model.depth
  for q, k, v, filled, out in calls:
    assert (filled == pos + 1).all()
    want = _softmax_attention64(q[:, None], k.swapaxes(1, 2), v.swapaxes(1, 2),
                                np.arange(slots) <= pos)
    # Keys of scale 10 make scores of ~100, whose float32 rounding the softmax passes on: on
    # these inputs jax.nn.dot_product_attention (the decode path before the [B, N, C, H] cache)
    # is 1.8e-5 from float64, this path 9e-6. Unfilled slots seen would be off by O(1).
    np.testing.assert_allclose(out, want[:, 0], atol=2e-5)
