"""Full-sequence attention: the TPU and GPU flash kernels (Pallas's interpreter on the CPU, with
the padding and segment ids of the real path) against float64 attention and its gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.kernels.attention import IMPLS, _key_tiles, attention, padded_length, whole_tiles
from ardiff.kernels.attention_mask import BlockMask
from tests.kernels._reference import attention64, attention64_grad


def test_padded_length_fits_both_kernels():
  lengths = (1, 9, 16, 17, 65, 128, 129, 785)
  assert [padded_length(n, "cuda") for n in lengths] == [16, 16, 16, 32, 128, 128, 256, 896]
  assert [padded_length(n, "tpu") for n in lengths] == [128] * 6 + [256, 896]


def _inputs(length, seed=0, batch=2, heads=2, dim=8):
  rng = np.random.default_rng(seed)
  return [(2 * rng.normal(size=(batch, length, heads, dim))).astype(np.float32)
          for _ in range(4)]


@pytest.mark.parametrize("impl", ["xla", "chunked", "flash-tpu-interpret",
                                  "flash-gpu-interpret"])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_and_its_gradient_are_float64_attention(impl, causal):
  # 23 tokens: padded (to 32 or 128), so a wrong padding mask (padded keys seen) shows; 150
  # for the chunked path, two chunks of 128 with the causal edge across them.
  length = 150 if impl == "chunked" else 23
  q, k, v, g = _inputs(length)
  allowed = np.ones((length, length), bool)
  allowed = np.tril(allowed) if causal else allowed

  def loss(q, k, v):
    out = attention(q, k, v, causal=causal, impl=impl)
    return jnp.sum(out * g), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(np.asarray(out), attention64(q, k, v, allowed)[0], atol=2e-5)
  for got, want, name in zip(grads, attention64_grad(q, k, v, allowed, g), "qkv"):
    np.testing.assert_allclose(np.asarray(got), want, atol=5e-5, err_msg=f"d{name}")


def test_flash_runs_xla_on_the_cpu_and_names_a_bad_impl():
  q, k, v, _ = _inputs(5)
  np.testing.assert_array_equal(np.asarray(attention(q, k, v, causal=True, impl="flash")),
                                np.asarray(attention(q, k, v, causal=True, impl="xla")))
  with pytest.raises(ValueError, match="impl must be one of"):
    attention(q, k, v, causal=True, impl="cudnn")
  assert set(IMPLS) >= {"xla", "flash"}


MASKS = {  # name: (length, the mask)
    "block-causal": lambda n: BlockMask.block_causal(n, 4),
    "two-copies+class": lambda n: BlockMask.two_copies((n - 1) // 2, 4).with_prefix(1),
}


@pytest.mark.parametrize("impl", ["xla", "chunked", "flash-tpu-interpret",
                                  "flash-gpu-interpret"])
@pytest.mark.parametrize("kind", sorted(MASKS))
def test_masked_attention_and_its_gradient_are_float64_attention(impl, kind):
  # 23 positions padded to 128 for splash; the chunked path at 513 (5 chunks of 128, padding,
  # and for the two-copy layout a table of 4 of the 5 key tiles per chunk).
  length = 513 if impl in ("chunked", "flash-gpu-interpret") else 23
  mask = MASKS[kind](length)
  q, k, v, g = _inputs(length)
  allowed = mask.dense()

  def loss(q, k, v):
    out = attention(q, k, v, mask=mask, impl=impl)
    return jnp.sum(out * g), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  np.testing.assert_allclose(np.asarray(out), attention64(q, k, v, allowed)[0], atol=2e-5)
  for got, want, name in zip(grads, attention64_grad(q, k, v, allowed, g), "qkv"):
    np.testing.assert_allclose(np.asarray(got), want, atol=5e-5, err_msg=f"d{name}")


def test_the_chunked_path_skips_key_tiles_the_two_copy_layout_hides():
  tiles = _key_tiles(MASKS["two-copies+class"](513), whole_tiles(513))
  assert tiles.shape == (5, 4)  # each query chunk reads 4 of the 5 key tiles
  # Chunk 0: the class and noised tokens 0-126 (their last block runs into tile 1), the clean
  # blocks before theirs (positions 257-380, tile 2), then filler (5: no tile).
  assert (tiles[0] == [0, 1, 2, 5]).all()
  # MNIST's 2 x 784 tokens and a class token, blocks of 16: 10 of 13 key tiles per chunk.
  assert _key_tiles(BlockMask.two_copies(784, 16).with_prefix(1), 1664).shape == (13, 10)
  assert _key_tiles(True, 384) is None


def test_a_mask_must_fit_and_come_alone():
  q, k, v, _ = _inputs(8)
  with pytest.raises(ValueError, match="mask must cover the 8 positions"):
    attention(q, k, v, mask=BlockMask.block_causal(9, 3))
  with pytest.raises(ValueError, match="without causal=True"):
    attention(q, k, v, causal=True, mask=BlockMask.block_causal(8, 3))
  # block size 1 is causal, block size T bidirectional: the same numbers as those paths.
  for size, causal in ((1, True), (8, False)):
    np.testing.assert_allclose(
        np.asarray(attention(q, k, v, mask=BlockMask.block_causal(8, size))),
        np.asarray(attention(q, k, v, causal=causal)), atol=1e-6)
