"""KV-cache decode attention: the TPU kernel and JAX's GPU kernel (Pallas's interpreter on the
CPU) and the XLA path against float64 softmax attention over the filled prefix, and each inside
the transformer against the full causal forward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.kernels.decode_attention import (CACHE_MULTIPLE, IMPLS, block_size, cache_length,
                                             decode_attention, prefix_segments, xla_block_decode)
from ardiff.models.transformer import Transformer, init_cache
from tests.kernels._reference import attention64
from tests.models.test_transformer import rough_params

KERNELS = ["xla", "pallas-tpu-interpret", "pallas-gpu-interpret"]


def test_block_and_cache_sizes():
  assert [block_size(n) for n in (784, 64, 48, 7, 1024)] == [16, 64, 16, 1, 128]
  assert [cache_length(n) for n in (1, 12, 16, 64, 784, 785)] == [16, 16, 16, 64, 784, 800]


def test_prefix_segments_tile_the_steps_with_caches_that_hold_them():
  assert prefix_segments(784, 784) == [(s, s + 128, s + 128) for s in range(0, 640, 128)] + [
      (640, 768, 768), (768, 784, 784)]
  assert prefix_segments(40, 784) == [(0, 40, 128)]  # a partial run: only the slots it fills
  assert prefix_segments(40, 784, None) == [(0, 40, 784)]
  assert prefix_segments(50, 50, 16) == [(0, 16, 16), (16, 32, 32), (32, 48, 48), (48, 50, 64)]
  for steps, length, segment in [(1, 1, 16), (17, 30, 16), (300, 300, 32), (785, 785, 128)]:
    plan = prefix_segments(steps, length, segment)
    assert [p[0] for p in plan] == [0] + [p[1] for p in plan[:-1]] and plan[-1][1] == steps
    for start, stop, slots in plan:  # every step's slot exists; valid caches, growing
      assert start < stop <= slots <= cache_length(length) and slots % CACHE_MULTIPLE == 0
    assert [p[2] for p in plan] == sorted(p[2] for p in plan)
  for bad in (0, 24, -16):
    with pytest.raises(ValueError, match="segment"):
      prefix_segments(64, 64, bad)


@pytest.mark.parametrize("impl", KERNELS)
def test_decode_is_softmax_attention_over_the_filled_prefix(impl):
  rng = np.random.default_rng(0)
  b, heads, slots, dim = 5, 2, 48, 8
  q = rng.normal(size=(b, heads, dim)).astype(np.float32)
  k = 3 * rng.normal(size=(b, heads, slots, dim)).astype(np.float32)  # garbage past `filled`
  v = rng.normal(size=(b, heads, slots, dim)).astype(np.float32)
  filled = np.array([1, 15, 16, 17, 48])  # one slot, tile edges, the whole cache
  out = np.asarray(decode_attention(q, k, v, filled, impl=impl))
  for i, n in enumerate(filled):
    # [1, 1, N, H] query over [1, C, N, H] keys, the first n allowed.
    ref, _ = attention64(q[i][None, None], k[i].swapaxes(0, 1)[None], v[i].swapaxes(0, 1)[None],
                         np.arange(slots)[None] < n)
    np.testing.assert_allclose(out[i], ref[0, 0], atol=2e-6, err_msg=f"filled={n}")


def test_a_block_of_queries_is_softmax_attention_over_the_filled_prefix():
  rng = np.random.default_rng(1)
  b, queries, heads, slots, dim = 3, 4, 2, 32, 8
  q = rng.normal(size=(b, queries, heads, dim)).astype(np.float32)
  k = 3 * rng.normal(size=(b, heads, slots, dim)).astype(np.float32)  # garbage past `filled`
  v = rng.normal(size=(b, heads, slots, dim)).astype(np.float32)
  filled = np.array([4, 17, 32])
  out = np.asarray(xla_block_decode(q, k, v, filled))
  for i, n in enumerate(filled):
    ref, _ = attention64(q[i][None], k[i].swapaxes(0, 1)[None], v[i].swapaxes(0, 1)[None],
                         np.broadcast_to(np.arange(slots) < n, (queries, slots)))
    np.testing.assert_allclose(out[i], ref[0], atol=2e-6, err_msg=f"filled={n}")


def test_bad_shapes_and_impls_are_named():
  q = np.zeros((2, 2, 8), np.float32)
  with pytest.raises(ValueError, match=r"must be \[B, N, H\] and the caches"):
    decode_attention(q, np.zeros((2, 16, 2, 8)), np.zeros((2, 16, 2, 8)), 3)
  with pytest.raises(ValueError, match="impl must be one of"):
    decode_attention(q, np.zeros((2, 2, 16, 8)), np.zeros((2, 2, 16, 8)), 3, impl="cuda")


@pytest.mark.parametrize("impl", IMPLS)
def test_transformer_decodes_as_the_full_forward_with_every_impl(impl):
  model = Transformer(vocab_size=5, seq_len=12, num_classes=3, width=32, depth=2, heads=4,
                      decode_attention=impl)
  params = rough_params(model)
  y = jnp.array([0, 2, 3])
  x = jax.random.randint(jax.random.key(1), (3, 12), 0, 5)
  full = np.asarray(jax.jit(model.apply)(params, x, y))
  step = jax.jit(lambda prev, pos, cache: model.apply(params, prev, pos, cache, y,
                                                      method=Transformer.decode_step))
  cache = init_cache(model, 3)
  prev = jnp.zeros((3,), jnp.int32)
  for pos in range(12):
    logits, cache = step(prev, jnp.int32(pos), cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, pos], atol=2e-5, rtol=1e-5)
    prev = x[:, pos]
  with pytest.raises(ValueError, match="decode_attention must be one of"):
    model.clone(decode_attention="cuda").apply(params, x, y)
