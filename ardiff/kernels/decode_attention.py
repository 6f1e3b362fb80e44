"""KV-cache decode attention over the filled prefix of the cache, per platform.

    out = decode_attention(q, k_cache, v_cache, filled, impl="pallas")
    # q [B, N, H]; caches [B, N, C, H] (C >= filled, a multiple of CACHE_MULTIPLE); out [B, N, H]

One query per example and head attends over cache positions 0..filled-1:

    out = sum_j softmax_j(q.k_j / sqrt(H)) v_j,   j < filled,

in float32 whatever the cache dtype. The cache is heads before positions ([B, N, C, H]) so that
every kernel reads it where it lies: ``[B*N, C, H]`` is a free reshape for the GPU kernel, and
the TPU kernel's DMAs copy ``[N, block, H]`` tiles of one example.

``impl`` (see ``IMPLS``):
  * ``"xla"``: scores for all C slots, the empty ones masked (O(C) per step whatever ``filled``;
    the raster sampler hands it caches sized per segment, `prefix_segments`). The reference,
    and the CPU body of every other impl. Two float32 einsums, not
    ``jax.nn.dot_product_attention``: with ``key_value_seq_lengths`` that took ``bench ar`` at
    L = 784 from 1.52 s to 3.27 s on CPU (issue [3/7]; it wants keys [B, C, N, H], a transpose
    of this heads-first cache), and for one query it is no better on an accelerator: in jax
    0.10.2 its default implementation is this same XLA einsum-and-mask on every platform
    (choosing cuDNN is a TODO there), and cuDNN's (``implementation="cudnn"``) takes
    fp16/bf16/fp8 only, while this cache is float32 unless the model is bf16. On GPU/TPU the
    right call is ``"pallas"``.
  * ``"pallas"``: chosen when the program is lowered (``platform.by_platform``):
      - GPU: JAX's own Triton decode kernel (``jax.experimental.pallas.ops.gpu.decode_attention``,
        one query head per KV head); its loads stop after the last filled block of each split.
      - TPU: the kernel below. JAX's TPU decode kernels do not fit: ``paged_attention`` fails to
        lower for head_dim != 128 (its m/l outputs get a head_dim-sized block over a size-1 axis;
        measured at head_dim 8, 16, 32, lowered for "TPU v5 lite"), and our heads are 8-32 wide.
        The cache stays in HBM (``pl.ANY``), the filled lengths are scalar-prefetched, and a
        loop of ``cdiv(filled, block)`` iterations DMAs only the filled ``[N, block, H]`` tiles
        into a double buffer (copy i+1 in flight while tile i is reduced) with an online
        softmax across tiles: m' = max(m, max_j s_j), l' = e^(m-m') l + sum_j e^(s_j-m'),
        acc' = e^(m-m') acc + sum_j e^(s_j-m') v_j, out = acc / l.
      - CPU: ``"xla"`` (Pallas has no CPU compiler).
  * ``"pallas-tpu-interpret"`` / ``"pallas-gpu-interpret"``: the TPU / GPU kernel in Pallas's
    interpreter on any backend; only for checking the kernels on a CPU (tests).
Status: both kernels lower for their platform from a CPU host (tests/test_lowering.py) and match
float64 attention in the interpreter (tests/kernels/test_decode_attention.py); neither has been
compiled or timed on a device, so nothing selects ``"pallas"`` by default
(``ardiff bench accelerator`` decides that).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from ardiff.kernels.platform import by_platform

IMPLS = ("xla", "pallas", "pallas-tpu-interpret", "pallas-gpu-interpret")
# Caches are allocated to a multiple of this many positions: the GPU kernel needs splits of at
# least 16 positions, the TPU kernel's tiles are 8-aligned. The extra slots are never filled.
CACHE_MULTIPLE = 16


def cache_length(seq_len: int) -> int:
  """Positions allocated for a sequence of ``seq_len`` tokens (a multiple of CACHE_MULTIPLE)."""
  return -(-seq_len // CACHE_MULTIPLE) * CACHE_MULTIPLE


# Positions per segment of a decoding scan (`prefix_segments`): a multiple of CACHE_MULTIPLE, so
# every segment's cache is a valid cache for the kernels.
SEGMENT = 128


def prefix_segments(steps: int, seq_len: int,
                    segment: int | None = SEGMENT) -> list[tuple[int, int, int]]:
  """How a decoding loop over positions 0..steps-1 splits into segments: ``(start, stop,
  slots)`` per segment, whose steps start..stop-1 run on a cache of ``slots`` positions (the
  positions filled by ``stop``, rounded up to CACHE_MULTIPLE; the full ``cache_length(seq_len)``
  at most). The XLA decode attention reads every slot of the cache it is given, so sizing the
  cache per segment (and growing it between segments) makes its work follow the filled prefix
  with static shapes: over L positions it reads about (n + 1) / 2n of the slots that one
  full-cache loop reads, n = L / segment. ``segment=None``: one segment over the full cache."""
  full = cache_length(seq_len)
  if segment is None:
    return [(0, steps, full)]
  if segment < 1 or segment % CACHE_MULTIPLE:
    raise ValueError(f"segment must be a positive multiple of {CACHE_MULTIPLE}, got {segment}")
  return [(start, min(start + segment, steps), min(start + segment, full))
          for start in range(0, steps, segment)]


def block_size(length: int, preferred: int = 128) -> int:
  """The largest power of two <= preferred dividing `length` (at least 1)."""
  block = preferred
  while block > 1 and length % block:
    block //= 2
  return block


def _check(q, k_cache, v_cache):
  b, heads, dim = q.shape
  if k_cache.shape != v_cache.shape or k_cache.ndim != 4 or k_cache.shape[:2] != (b, heads) \
      or k_cache.shape[3] != dim:
    raise ValueError(f"decode_attention: q {q.shape} must be [B, N, H] and the caches "
                     f"[B, N, C, H], got {k_cache.shape} and {v_cache.shape}")


def xla_decode(q, k_cache, v_cache, filled):
  """The reference: float32 scores over all C slots, slots >= filled masked."""
  scale = 1.0 / float(q.shape[-1]) ** 0.5
  s = jnp.einsum("bnh,bnch->bnc", q.astype(jnp.float32), k_cache.astype(jnp.float32)) * scale
  slot = jnp.arange(k_cache.shape[2])
  s = jnp.where(slot[None, None, :] < filled[:, None, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bnc,bnch->bnh", p, v_cache.astype(jnp.float32)).astype(q.dtype)


def xla_block_decode(q, k_cache, v_cache, filled):
  """Q queries per example, q [B, Q, N, H], each over slots < filled [B] of the caches: the
  float32 scores [B, N, Q, C], the unfilled slots masked; returns [B, Q, N, H] in q's dtype."""
  scale = 1.0 / float(q.shape[-1]) ** 0.5
  s = jnp.einsum("bqnh,bnch->bnqc", q.astype(jnp.float32), k_cache.astype(jnp.float32)) * scale
  slot = jnp.arange(k_cache.shape[2])
  s = jnp.where(slot < filled[:, None, None, None], s, -jnp.inf)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bnqc,bnch->bqnh", p, v_cache.astype(jnp.float32)).astype(q.dtype)


def _gpu_decode(q, k_cache, v_cache, filled, *, interpret: bool = False):
  """JAX's Triton decode kernel, every (example, head) a row of its batch."""
  from jax.experimental.pallas.ops.gpu import decode_attention as triton_decode

  b, heads, cache, dim = k_cache.shape
  split = next(s for s in (256, 128, 64, 32, 16) if cache % s == 0)  # cache % 16 == 0
  out = triton_decode.mqa(
      q.reshape(b * heads, 1, dim), k_cache.reshape(b * heads, cache, dim),
      v_cache.reshape(b * heads, cache, dim), kv_seq_len=jnp.repeat(filled, heads),
      k_splits=cache // split, block_k=min(split, 64), interpret=interpret)
  return out.reshape(b, heads, dim).astype(q.dtype)  # the kernel's sum is float32


def _tpu_kernel(filled_ref, q_ref, k_hbm, v_hbm, o_ref, k_buf, v_buf, sem, *, block, scale):
  example = pl.program_id(0)
  filled = filled_ref[example]
  tiles = pl.cdiv(filled, block)

  def copies(i, slot):
    rows = pl.ds(pl.multiple_of(i * block, block), block)
    return (pltpu.make_async_copy(k_hbm.at[example, :, rows, :], k_buf.at[slot], sem.at[0, slot]),
            pltpu.make_async_copy(v_hbm.at[example, :, rows, :], v_buf.at[slot], sem.at[1, slot]))

  for copy in copies(0, 0):
    copy.start()
  q = q_ref[...].astype(jnp.float32) * scale  # [N, H]

  def step(i, carry):
    m, l, acc = carry
    slot = i % 2
    for copy in copies(i, slot):
      copy.wait()

    @pl.when(i + 1 < tiles)
    def _prefetch():
      for copy in copies(i + 1, 1 - slot):
        copy.start()

    k = k_buf[slot].astype(jnp.float32)  # [N, block, H]
    v = v_buf[slot].astype(jnp.float32)
    s = jnp.sum(q[:, None, :] * k, axis=-1)  # [N, block]
    position = i * block + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
    s = jnp.where(position < filled, s, -jnp.inf)
    m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    alpha = jnp.exp(m - m_new)
    return (m_new, alpha * l + p.sum(axis=1, keepdims=True),
            alpha * acc + jnp.sum(p[:, :, None] * v, axis=1))

  heads = q.shape[0]
  init = (jnp.full((heads, 1), -jnp.inf, jnp.float32), jnp.zeros((heads, 1), jnp.float32),
          jnp.zeros(q.shape, jnp.float32))
  _, l, acc = jax.lax.fori_loop(0, tiles, step, init)
  o_ref[...] = (acc / l).astype(o_ref.dtype)


def _tpu_decode(q, k_cache, v_cache, filled, *, interpret=False, block: int | None = None):
  """The TPU kernel (module docstring): one program per example, all heads."""
  b, heads, dim = q.shape
  block = block or block_size(k_cache.shape[2])
  if k_cache.shape[2] % block:
    raise ValueError(f"decode_attention: block {block} must divide the cache length "
                     f"{k_cache.shape[2]}")
  per_example = pl.BlockSpec((None, heads, dim), lambda i, filled: (i, 0, 0))
  return pl.pallas_call(
      functools.partial(_tpu_kernel, block=block, scale=1.0 / float(dim) ** 0.5),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(b,),
          in_specs=[per_example, pl.BlockSpec(memory_space=pl.ANY),
                    pl.BlockSpec(memory_space=pl.ANY)],
          out_specs=per_example,
          scratch_shapes=[pltpu.VMEM((2, heads, block, dim), k_cache.dtype),
                          pltpu.VMEM((2, heads, block, dim), v_cache.dtype),
                          pltpu.SemaphoreType.DMA((2, 2))]),
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
      interpret=pltpu.InterpretParams() if interpret else False,
  )(filled, q, k_cache, v_cache)


def decode_attention(q: jax.Array, k_cache: jax.Array, v_cache: jax.Array, filled: jax.Array,
                     *, impl: str = "pallas") -> jax.Array:
  """Attention of q [B, N, H] over the first ``filled`` [B] (>= 1) slots of the caches
  [B, N, C, H]; returns [B, N, H] in q's dtype (q is cast to the caches' dtype, never the
  caches: they are the big operands). ``impl``: see the module docstring."""
  _check(q, k_cache, v_cache)
  filled = jnp.broadcast_to(jnp.asarray(filled, jnp.int32), q.shape[:1])
  args = (q.astype(k_cache.dtype), k_cache, v_cache, filled)
  if impl == "xla":
    out = xla_decode(*args)
  elif impl == "pallas":
    out = by_platform(*args, xla=xla_decode, tpu=_tpu_decode, cuda=_gpu_decode)
  elif impl == "pallas-tpu-interpret":
    out = _tpu_decode(*args, interpret=True)
  elif impl == "pallas-gpu-interpret":
    out = _gpu_decode(*args, interpret=True)
  else:
    raise ValueError(f"decode_attention: impl must be one of {IMPLS}, got {impl!r}")
  return out.astype(q.dtype)
