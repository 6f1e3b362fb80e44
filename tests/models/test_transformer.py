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


def _decode_blocks(model, params, tokens, y, inputs):
  """Logits [B, L, V] of decode_block over the blocks in order, block k given inputs(k)."""
  b = model.block_size or 1
  step = jax.jit(lambda block, k, cache: model.apply(params, block, k, cache, y,
                                                     method=Transformer.decode_block))
  cache, out = init_cache(model, tokens.shape[0]), []
  for k in range(model.seq_len // b):
    logits, cache = step(inputs(k), jnp.int32(k), cache)
    out.append(np.asarray(logits))
  return np.concatenate(out, axis=1), cache


@pytest.mark.parametrize("block_size", [None, 1, 4])
def test_blockwise_ar_decodes_block_by_block_as_the_full_forward(block_size):
  """Causal mode: the input shifted by one block, block-causal attention; decode_block (one
  call per block, bidirectional within it) gives the full forward's logits, and for blocks of
  1 exactly decode_step's."""
  model = _model(True, length=12, block_size=block_size)
  params = rough_params(model)
  x = jax.random.randint(jax.random.key(5), (3, 12), 0, 5)
  y = jnp.array([0, 2, 3])
  full = np.asarray(jax.jit(model.apply)(params, x, y))
  b = block_size or 1
  got, cache = _decode_blocks(model, params, x, y, lambda k: x[:, max(k - 1, 0) * b:][:, :b])
  np.testing.assert_allclose(got, full, atol=2e-5, rtol=1e-5)
  filled = np.abs(np.asarray(cache["k"][1])).sum(axis=-1) > 0
  assert filled[:, :, :12].all() and not filled[:, :, 12:].any()
  if b == 1:
    step = jax.jit(lambda prev, pos, cache: model.apply(params, prev, pos, cache, y,
                                                        method=Transformer.decode_step))
    cache, prev = init_cache(model, 3), jnp.zeros((3,), jnp.int32)
    for pos in range(12):  # the same computation, compiled as another program
      logits, cache = step(prev, jnp.int32(pos), cache)
      np.testing.assert_allclose(np.asarray(logits), got[:, pos], atol=1e-6, rtol=1e-6)
      prev = x[:, pos]
    return
  # Block-causal with the input shifted by a block: token 5 (block 1) is read by block 2 only.
  changed = np.asarray(jax.jit(model.apply)(params, x.at[:, 5].set((x[:, 5] + 1) % 5), y))
  np.testing.assert_allclose(changed[:, :8], full[:, :8], atol=1e-6)  # blocks 0, 1
  assert (np.abs(changed[:, 8:] - full[:, 8:]).max(axis=(0, 2)) > 1e-4).all()  # block 2


def test_block_diffusion_two_copy_forward_is_decoding_clean_blocks_then_a_noised_one():
  """Bidirectional mode with block_size: one forward over [class, noised, clean] gives, for
  every block k, the logits of decoding the clean blocks < k and then the noised block k."""
  model = _model(False, length=12, block_size=4)
  params = rough_params(model)
  clean = jax.random.randint(jax.random.key(1), (2, 12), 0, 5)
  hide = jax.random.bernoulli(jax.random.key(2), 0.5, (2, 12))
  noised = jnp.where(hide, model.mask_id, clean)
  y = jnp.array([1, 3])
  both = np.asarray(jax.jit(model.apply)(params, noised, y, clean=clean))
  block = lambda x, k: x[:, 4 * k:4 * k + 4]
  step = jax.jit(lambda tokens, k, cache: model.apply(params, tokens, k, cache, y,
                                                      method=Transformer.decode_block))
  cache = init_cache(model, 2)
  assert cache["k"][0].shape[2] == 16  # 13 slots: the class token and 12
  for k in range(3):
    logits, _ = step(block(noised, k), jnp.int32(k), cache)  # the noised block, not kept
    np.testing.assert_allclose(np.asarray(logits), block(both, k), atol=2e-5, rtol=1e-5)
    _, cache = step(block(clean, k), jnp.int32(k), cache)  # the clean block, kept
  # Without a clean copy: block-causal over the tokens, which decoding the tokens reproduces.
  single = np.asarray(jax.jit(model.apply)(params, noised, y))
  got, _ = _decode_blocks(model, params, noised, y, lambda k: block(noised, k))
  np.testing.assert_allclose(got, single, atol=2e-5, rtol=1e-5)
  assert np.abs(single - both).max() > 1e-3  # blocks > 0 see clean, not noised, history


def test_block_masks_and_bad_block_sizes():
  assert _model(True).attention_mask() is None
  assert _model(True, block_size=1).attention_mask() is None
  assert _model(False).attention_mask() is None
  mask = _model(False, length=4, block_size=2).attention_mask(two_copies=True)
  assert mask.block == (-1, 0, 0, 1, 1, 0, 0, 1, 1) and mask.copy == (0,) + (1,) * 4 + (0,) * 4
  x, y = jnp.zeros((1, 10), jnp.int32), jnp.zeros((1,), jnp.int32)
  for bad in (0, 3, 2.0):
    with pytest.raises(ValueError, match="block_size must be None or a positive divisor"):
      _model(True, block_size=bad).init(jax.random.key(0), x, y)
  params = rough_params(_model(False))
  with pytest.raises(ValueError, match="clean: needs a bidirectional Transformer with"):
    _model(False).apply(params, x, y, clean=x)
  with pytest.raises(ValueError, match="decode_block: tokens must be"):
    _model(False).apply(params, x[:, :2], 0, init_cache(_model(False), 1), y,
                        method=Transformer.decode_block)
  # The config section's key (no default: existing sections and their cache keys unchanged).
  from ardiff.configs.validation import ConfigError
  from ardiff.model_sections import transformer_section, validate_transformer

  assert "block_size" not in transformer_section()
  validate_transformer(transformer_section(block_size=16), "ar")
  with pytest.raises(ConfigError, match=r"'ar.block_size': must be None or a positive integer"):
    validate_transformer(transformer_section(block_size=0), "ar")
