"""The Pallas decode-attention kernel (interpret mode on CPU) against float64 softmax attention
over the filled prefix, and inside the transformer against the XLA decode path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.kernels.decode_attention import block_size, decode_attention
from ardiff.models.transformer import Transformer, init_cache
from tests.models.test_transformer import _softmax_attention64, rough_params


def test_block_size_divides_the_cache():
  assert [block_size(n) for n in (784, 64, 48, 7, 1024)] == [16, 64, 16, 1, 128]


@pytest.mark.parametrize("block", [16, 48])
def test_kernel_is_softmax_attention_over_the_filled_prefix(block):
  rng = np.random.default_rng(0)
  b, length, heads, dim = 5, 48, 2, 8
  q = rng.normal(size=(b, 1, heads, dim)).astype(np.float32)
  k = 3 * rng.normal(size=(b, length, heads, dim)).astype(np.float32)  # garbage past `filled`
  v = rng.normal(size=(b, length, heads, dim)).astype(np.float32)
  filled = np.array([1, 15, 16, 17, 48])  # one slot, block edges, the whole cache
  out = np.asarray(decode_attention(q, k, v, filled, block=block))
  for i, n in enumerate(filled):
    ref = _softmax_attention64(q[i:i + 1].astype(np.float64), k[i:i + 1].astype(np.float64),
                               v[i:i + 1].astype(np.float64), np.arange(length)[None] < n)
    np.testing.assert_allclose(out[i:i + 1], ref, atol=1e-6, err_msg=f"filled={n}")
  with pytest.raises(ValueError, match="block 32 must divide"):
    decode_attention(q, k, v, filled, block=32)


def test_transformer_decodes_the_same_with_the_kernel():
  base = Transformer(vocab_size=5, seq_len=12, num_classes=3, width=32, depth=2, heads=4)
  kernel = base.clone(decode_attention="pallas")
  params = rough_params(base)
  y = jnp.array([0, 2, 3])
  x = jax.random.randint(jax.random.key(1), (3, 12), 0, 5)
  caches = [init_cache(base, 3), init_cache(kernel, 3)]
  prev = jnp.zeros((3,), jnp.int32)
  for pos in range(12):
    outs = []
    for i, model in enumerate((base, kernel)):
      logits, caches[i] = model.apply(params, prev, jnp.int32(pos), caches[i], y,
                                      method=Transformer.decode_step)
      outs.append(np.asarray(logits))
    np.testing.assert_allclose(outs[1], outs[0], atol=2e-5, rtol=1e-5)
    prev = x[:, pos]
  with pytest.raises(ValueError, match="decode_attention must be"):
    base.clone(decode_attention="cuda").apply(params, x, y)
