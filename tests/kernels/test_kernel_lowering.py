"""The attention kernels lower for TPU and CUDA from this CPU (`jax.export`), alone and inside
the programs that use them (a KV-cache decode scan, a training gradient), carrying their kernel
(a Mosaic or Triton custom call) and never Pallas's interpreter or a host callback."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from ardiff.kernels import platform
from ardiff.kernels.attention import attention
from ardiff.kernels.attention_mask import BlockMask
from ardiff.kernels.decode_attention import cache_length, decode_attention
from ardiff.models.transformer import Transformer, init_cache

S = jax.ShapeDtypeStruct


def _lowered(fn, args, platforms=platform.ACCELERATORS) -> dict[str, list[str]]:
  """{platform: custom-call targets} of fn exported for each platform alone."""
  out = {}
  for name in platforms:
    module = platform.export_for(fn, args, (name,), pallas_tpu=True).mlir_module()
    assert not platform.HOST_CALLBACK.search(module), f"{name}: a host callback in the module"
    out[name] = platform.custom_call_targets(module)
  return out


def _assert_kernels(targets: dict[str, list[str]]):
  for name, found in targets.items():
    assert platform.KERNEL_TARGETS[name] in found, f"{name}: no kernel, only {found}"


# MNIST scale (width 256, 8 heads: head_dim 32), batch 64; and a digits-sized cache.
@pytest.mark.parametrize("batch,heads,seq,dim,dtype", [(64, 8, 784, 32, jnp.bfloat16),
                                                       (16, 4, 64, 16, jnp.float32)])
def test_decode_kernels_lower_for_tpu_and_cuda(batch, heads, seq, dim, dtype):
  cache = S((batch, heads, cache_length(seq), dim), dtype)
  args = (S((batch, heads, dim), dtype), cache, cache, S((batch,), jnp.int32))
  _assert_kernels(_lowered(functools.partial(decode_attention, impl="pallas"), args))


@pytest.mark.parametrize("seq,causal", [(784, True), (785, False), (65, False)])
def test_flash_attention_and_its_gradient_lower_for_tpu_and_cuda(seq, causal):
  x = S((2, seq, 8, 32), jnp.bfloat16)

  def loss(q, k, v):
    return attention(q, k, v, causal=causal, impl="flash").astype(jnp.float32).sum()

  _assert_kernels(_lowered(jax.grad(loss, argnums=(0, 1, 2)), (x, x, x)))


def test_transformer_programs_carry_the_kernels():
  """A training gradient with flash attention and a 784-step KV-cache decode scan with the
  decode kernel, MNIST-sized. (One platform per export: Pallas lowers a kernel for every
  platform of a multi-platform export, and a TPU kernel's compiler params refuse the GPU.)"""
  model = Transformer(vocab_size=256, seq_len=784, num_classes=10, width=256, depth=2, heads=8,
                      dtype=jnp.bfloat16, attention="flash", decode_attention="pallas")
  tokens, labels = S((4, 784), jnp.int32), S((4,), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens, labels)

  def grad(params, tokens, labels):
    logits = model.apply(params, tokens, labels)
    return jax.grad(lambda p: model.apply(p, tokens, labels).mean())(params), logits

  def decode(params, labels):
    def step(carry, pos):
      prev, cache = carry
      logits, cache = model.apply(params, prev, pos, cache, labels,
                                  method=Transformer.decode_step)
      return (jnp.argmax(logits, -1).astype(jnp.int32), cache), None

    carry = (jnp.zeros(labels.shape, jnp.int32), init_cache(model, labels.shape[0]))
    return jax.lax.scan(step, carry, jnp.arange(784))[0][0]

  _assert_kernels(_lowered(grad, (params, tokens, labels)))
  _assert_kernels(_lowered(decode, (params, labels)))


def test_an_interpreted_kernel_is_refused_or_seen():
  """What choosing the interpreter at trace time would have done: the TPU interpreter (host
  callbacks) cannot be exported for a TPU at all, and the GPU one exports as plain XLA loops,
  which the kernel check above refuses."""
  cache = S((2, 2, 16, 8), jnp.float32)
  args = (S((2, 2, 8), jnp.float32), cache, cache, S((2,), jnp.int32))
  with pytest.raises(ValueError, match="backend cpu is different from the lowering platform"):
    _lowered(functools.partial(decode_attention, impl="pallas-tpu-interpret"), args, ("tpu",))
  gpu = _lowered(functools.partial(decode_attention, impl="pallas-gpu-interpret"), args, ("cuda",))
  with pytest.raises(AssertionError, match="cuda: no kernel"):
    _assert_kernels(gpu)


@pytest.mark.parametrize("seq,mask", [
    (784, BlockMask.block_causal(784, 16)),
    (1569, BlockMask.two_copies(784, 16).with_prefix(1))])
def test_masked_flash_attention_and_its_gradient_lower_for_tpu_and_cuda(seq, mask):
  """TPU: splash attention's kernels; CUDA: the chunked XLA path (JAX's GPU mha is causal-only),
  so no kernel there, only no host callback."""
  x = S((2, seq, 8, 32), jnp.bfloat16)

  def loss(q, k, v):
    return attention(q, k, v, mask=mask, impl="flash").astype(jnp.float32).sum()

  targets = _lowered(jax.grad(loss, argnums=(0, 1, 2)), (x, x, x))
  _assert_kernels({"tpu": targets["tpu"]})
  assert not targets["cuda"] & set(platform.KERNEL_TARGETS.values())


def test_block_diffusion_programs_lower_for_tpu_and_cuda():
  """Block diffusion's two-copy training gradient (splash attention on TPU) and a scan of
  block decodes (blocks of 16: XLA's block decode attention; the class token's single query
  through the decode kernel), MNIST-sized."""
  model = Transformer(vocab_size=256, seq_len=784, num_classes=10, width=256, depth=2, heads=8,
                      causal=False, block_size=16, dtype=jnp.bfloat16, attention="flash",
                      decode_attention="pallas")
  tokens, labels = S((4, 784), jnp.int32), S((4,), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.key(0), tokens, labels)

  def grad(params, tokens, labels):
    return jax.grad(lambda p: model.apply(p, tokens, labels, clean=tokens).mean())(params)

  def decode(params, labels):
    def step(cache, index):
      block = jnp.full((labels.shape[0], 16), model.mask_id, jnp.int32)
      logits, cache = model.apply(params, block, index, cache, labels,
                                  method=Transformer.decode_block)
      return cache, jnp.argmax(logits, -1)

    return jax.lax.scan(step, init_cache(model, labels.shape[0]), jnp.arange(49))[1]

  train = _lowered(grad, (params, tokens, labels))
  _assert_kernels({"tpu": train["tpu"]})  # CUDA: the chunked XLA path
  _assert_kernels(_lowered(decode, (params, labels)))
