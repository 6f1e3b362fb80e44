"""Full-sequence softmax attention for training and evaluation, per platform.

    out = attention(q, k, v, causal=True, impl="flash")   # q, k, v, out: [B, T, N, H]

    out_i = sum_j softmax_j(q_i.k_j / sqrt(H)) v_j,   over j <= i (causal) or all j,

with float32 logits and softmax whatever the compute dtype. ``impl`` (see ``IMPLS``):
  * ``"xla"``: ``jax.nn.dot_product_attention`` with XLA's implementation: it materialises the
    [B, N, T, T] logits and probabilities, and keeps them for the backward pass (at T = 785,
    width 256, batch 64 that is most of the ~41 GiB of the MNIST-scale step, ``ardiff bench
    memory``). The reference, and the CPU body of ``"flash"``.
  * ``"flash"``: chosen when the program is lowered (``platform.by_platform``):
      - TPU: JAX's Pallas TPU flash attention (``pallas.ops.tpu.flash_attention``, forward and
        backward kernels, [B, N, T, H] layout);
      - GPU: JAX's Pallas GPU (Triton) flash attention (``pallas.ops.gpu.attention.mha``, forward
        and backward kernels). cuDNN's (``dot_product_attention(implementation="cudnn")``) is not
        used: it asks the local cuDNN for its version while tracing, so it cannot be shown to
        lower from a CPU host, and it is bf16/fp16 only;
      - CPU: ``"xla"``.
    Both kernels need the length to be a multiple of their tile: T is padded to ``padded_length``
    and the padding is kept out by segment ids (real tokens segment 1, padding 0: a real query
    never attends to a padded key; padded queries attend to padding and are sliced away). Memory
    is O(T) per head: the kernels keep the output and the log-sum-exp, not the maps.
  * ``"chunked"``: flash attention's memory in plain XLA, on any backend: the queries in chunks
    of TILE under ``lax.scan``, a custom VJP that keeps only (q, k, v, out, log-sum-exp) and
    recomputes each chunk's probabilities in the backward pass (dV = P^T G, dS = P (G V^T - D),
    D = rowsum(G * out), dQ = dS K / sqrt(H), dK = dS^T Q / sqrt(H)). Slower than ``"xla"`` on a
    CPU (a loop of small matmuls); it is how ``ardiff bench memory`` measures what the flash
    kernels leave of a step's memory on a CPU, and a fallback where no kernel lowers.
  * ``"flash-tpu-interpret"`` / ``"flash-gpu-interpret"``: the TPU / GPU path in Pallas's
    interpreter on any backend, padding included; only for checking on a CPU (tests).
  * ``mask=BlockMask(...)`` (``kernels.attention_mask``: block-causal, block diffusion's
    two-copy layout, a class-token prefix) instead of causal/bidirectional, per impl: ``"xla"``
    with the dense [T, T] mask; ``"chunked"`` with the ids, computing per query chunk only the
    key tiles it can see (a static table as wide as the widest row: at MNIST's two-copy layout
    with a class token, 10 of 13; none skipped for block-causal, whose last chunk sees all);
    ``"flash"``: TPU: JAX's splash attention (``pallas.ops.tpu.splash_attention``) with the
    dense mask (it skips the hidden tiles itself), GPU: ``"chunked"`` (JAX's GPU mha is
    causal-only), CPU: ``"xla"``. ``"flash-tpu-interpret"`` runs splash in Pallas's
    interpreter; ``"flash-gpu-interpret"`` is ``"chunked"``, what the GPU runs. Splash lowers
    for TPU from a CPU host under ``platform.abstract_tpu``, forward and backward
    (tests/kernels); not compiled or timed on a TPU.
Status: both kernels lower for their platform from a CPU host, forward and backward
(tests/test_lowering.py), and match float64 attention and its gradient in the interpreter
(tests/kernels/test_attention.py); not compiled or timed on a device yet, so ``"xla"`` stays
the default (``ardiff bench accelerator`` decides).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import tpu as pltpu

from ardiff.kernels import attention_mask
from ardiff.kernels.attention_mask import BlockMask
from ardiff.kernels.platform import by_platform

IMPLS = ("xla", "flash", "chunked", "flash-tpu-interpret", "flash-gpu-interpret")
TILE = 128  # both kernels' default tile along the sequence


def whole_tiles(length: int) -> int:
  """`length` rounded up to a multiple of TILE."""
  return -(-length // TILE) * TILE


def padded_length(length: int, platform: str) -> int:
  """The sequence length a kernel runs at. TPU: a multiple of TILE (its segment-id masking
  needs key tiles of 128 lanes). GPU: a multiple of TILE above it, else the next power of two
  >= 16 (Triton tiles are powers of two)."""
  if length > TILE or platform == "tpu":
    return whole_tiles(length)
  return max(16, 1 << (length - 1).bit_length())


def xla_attention(q, k, v, causal: bool):
  return jax.nn.dot_product_attention(q, k, v, is_causal=causal)


def xla_masked_attention(q, k, v, mask: BlockMask):
  return jax.nn.dot_product_attention(q, k, v, mask=jnp.asarray(mask.dense())[None, None])


def _pad(x, to):
  return jnp.pad(x, ((0, 0), (0, to - x.shape[1]), (0, 0), (0, 0)))


def _segments(batch: int, length: int, to: int) -> jax.Array:
  return jnp.broadcast_to((jnp.arange(to) < length).astype(jnp.int32), (batch, to))


def _tpu_flash(q, k, v, causal: bool):
  from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

  b, length, _, dim = q.shape
  to, tile = padded_length(length, "tpu"), TILE
  sizes = tpu_flash.BlockSizes(
      block_q=tile, block_k_major=tile, block_k=tile, block_b=1, block_q_major_dkv=tile,
      block_k_major_dkv=tile, block_k_dkv=tile, block_q_dkv=tile, block_k_major_dq=tile,
      block_k_dq=tile, block_q_dq=tile)
  heads_first = lambda x: jnp.swapaxes(_pad(x, to), 1, 2)  # [B, N, T', H]
  segments = _segments(b, length, to)
  out = tpu_flash.flash_attention(
      heads_first(q), heads_first(k), heads_first(v),
      segment_ids=tpu_flash.SegmentIds(segments, segments), causal=causal,
      sm_scale=1.0 / float(dim) ** 0.5, block_sizes=sizes)
  return jnp.swapaxes(out, 1, 2)[:, :length].astype(q.dtype)


# The TPU kernel has no `interpret` argument; Pallas's TPU interpreter is a context that must
# be active whenever a kernel is traced, the backward kernels included (traced when the
# gradient is taken, outside any forward call): hence a custom_vjp that enters it both times.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _tpu_flash_interpreted(q, k, v, causal):
  with pltpu.force_tpu_interpret_mode():
    return _tpu_flash(q, k, v, causal)


def _tpu_flash_interpreted_fwd(q, k, v, causal):
  with pltpu.force_tpu_interpret_mode():
    return jax.vjp(lambda *qkv: _tpu_flash(*qkv, causal), q, k, v)


def _tpu_flash_interpreted_bwd(causal, vjp, cotangent):
  with pltpu.force_tpu_interpret_mode():
    return vjp(cotangent)


_tpu_flash_interpreted.defvjp(_tpu_flash_interpreted_fwd, _tpu_flash_interpreted_bwd)


def _tpu_splash(q, k, v, mask: BlockMask, interpret: bool = False):
  """JAX's splash attention (Pallas TPU) with the BlockMask as a dense numpy mask, from which it
  finds the fully hidden [TILE, TILE] tiles and skips them; padding by the mask's PAD ids."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

  b, length, heads, dim = q.shape
  to = padded_length(length, "tpu")
  dense = masks.NumpyMask(mask.padded(to).dense())
  kernel = splash.make_splash_mha(
      masks.MultiHeadMask([dense] * heads), head_shards=1, q_seq_shards=1,
      block_sizes=splash.BlockSizes.get_default(), interpret=interpret)
  heads_first = lambda x: jnp.swapaxes(_pad(x, to), 1, 2)  # [B, N, T', H]
  scaled = (heads_first(q) * (1.0 / float(dim) ** 0.5)).astype(q.dtype)  # splash does not scale
  out = jax.vmap(kernel)(scaled, heads_first(k), heads_first(v))
  return jnp.swapaxes(out, 1, 2)[:, :length].astype(q.dtype)


def _gpu_flash(q, k, v, causal: bool, interpret: bool = False):
  from jax.experimental.pallas.ops.gpu import attention as gpu_flash

  b, length, _, dim = q.shape
  to = padded_length(length, "cuda")
  tile = min(TILE, to)
  back = min(32, to)  # JAX's default backward tiles (shared memory bounds them on GPUs)
  sizes = gpu_flash.BlockSizes(block_q=tile, block_k=tile, block_q_dkv=back, block_kv_dkv=back,
                               block_q_dq=back, block_kv_dq=back)
  out = gpu_flash.mha(_pad(q, to), _pad(k, to), _pad(v, to), _segments(b, length, to),
                      sm_scale=1.0 / float(dim) ** 0.5, causal=causal, block_sizes=sizes,
                      interpret=interpret)
  return out[:, :length].astype(q.dtype)


def _chunks(x, to):  # [B, T, N, H] -> [T'/TILE, B, TILE, N, H], zero-padded
  b, _, n, h = x.shape
  return _pad(x, to).reshape(b, to // TILE, TILE, n, h).swapaxes(0, 1)


def _unchunk(x, length):  # the inverse of _chunks, padding dropped
  c, b, tile = x.shape[:3]
  return x.swapaxes(0, 1).reshape(b, c * tile, *x.shape[3:])[:, :length]


def _key_tiles(rule, to: int) -> np.ndarray | None:
  """Per query chunk, the key tiles it can see ([T'/TILE, n], static), padded with T'/TILE (no
  tile: gathered clipped, scattered nowhere, masked out); None for causal / bidirectional, whose
  chunks read every key tile (the causal path masks, it does not skip)."""
  if not isinstance(rule, BlockMask):
    return None
  seen = rule.padded(to).tiles_seen(TILE)
  tiles = np.full((len(seen), seen.sum(axis=1).max()), len(seen), np.int32)
  for row, visible in zip(tiles, seen):
    row[:visible.sum()] = np.flatnonzero(visible)
  return tiles


def _visible_keys(x, tiles, index):
  """The keys (or values) [B, T', N, H] a query chunk reads: all of them, or (``tiles``) its
  visible key tiles gathered [B, n*TILE, N, H]; and their positions [n*TILE] (>= T': none)."""
  if tiles is None:
    return x, jnp.arange(x.shape[1])
  row = jnp.asarray(tiles)[index]
  b, to, n, h = x.shape
  gathered = jnp.take(x.reshape(b, to // TILE, TILE, n, h), row, axis=1, mode="clip")
  return gathered.reshape(b, -1, n, h), (row[:, None] * TILE + jnp.arange(TILE)).reshape(-1)


def _scatter_keys(acc, update, tiles, index):
  """acc [B, T', N, H] + update [B, S, N, H] at the positions _visible_keys read."""
  if tiles is None:
    return acc + update
  b, to, n, h = acc.shape
  tiled = acc.reshape(b, to // TILE, TILE, n, h).at[:, jnp.asarray(tiles)[index]].add(
      update.reshape(b, -1, TILE, n, h))  # the padding tile index is out of range: dropped
  return tiled.reshape(acc.shape)


def _chunk_scores(q_chunk, index, k, key, rule, length):
  """float32 scores of one query chunk [B, TILE, N, H] against keys [B, S, N, H] at positions
  ``key`` [S], with the keys the rule hides at -inf: past the true length or (causal) past the
  query, or (a BlockMask ``rule``) by its ids, padding and gathered filler included: [B, N,
  TILE, S]."""
  scale = 1.0 / float(q_chunk.shape[-1]) ** 0.5
  s = jnp.einsum("bqnh,bknh->bnqk", q_chunk.astype(jnp.float32), k.astype(jnp.float32)) * scale
  query = index * TILE + jnp.arange(TILE)[:, None]
  key = key[None, :]
  if isinstance(rule, BlockMask):
    block, copy = (jnp.asarray(a) for a in rule.padded(whole_tiles(length) + 1).arrays())
    key = jnp.minimum(key, len(block) - 1)  # filler: the last id, padding no real query sees
    allowed = attention_mask.allowed(block[query], copy[query], block[key], copy[key])
  else:
    allowed = (key < length) & ((key <= query) if rule else True)
  return jnp.where(allowed, s, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _chunked(q, k, v, rule):
  """``rule``: causal (bool) or a BlockMask over the T positions."""
  return _chunked_fwd(q, k, v, rule)[0]


def _chunked_fwd(q, k, v, rule):
  length = q.shape[1]
  to = whole_tiles(length)
  kp, vp = _pad(k, to), _pad(v, to)
  tiles = _key_tiles(rule, to)

  def one(_, xs):
    q_chunk, index = xs
    (keys, key), (values, _) = (_visible_keys(x, tiles, index) for x in (kp, vp))
    s = _chunk_scores(q_chunk, index, keys, key, rule, length)
    lse = jax.nn.logsumexp(s, axis=-1)  # [B, N, TILE]
    out = jnp.einsum("bnqk,bknh->bqnh", jnp.exp(s - lse[..., None]), values.astype(jnp.float32))
    return None, (out.astype(q.dtype), lse)

  _, (out, lse) = jax.lax.scan(one, None, (_chunks(q, to), jnp.arange(to // TILE)))
  out = _unchunk(out, length)
  return out, (q, k, v, out, lse)


def _chunked_bwd(rule, residuals, g):
  q, k, v, out, lse = residuals
  length = q.shape[1]
  to = whole_tiles(length)
  kp, vp = _pad(k, to).astype(jnp.float32), _pad(v, to).astype(jnp.float32)
  tiles = _key_tiles(rule, to)
  scale = 1.0 / float(q.shape[-1]) ** 0.5
  delta = jnp.sum(g.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, T, N]

  def one(carry, xs):
    dk, dv = carry
    q_chunk, g_chunk, d_chunk, lse_chunk, index = xs
    (keys, key), (values, _) = (_visible_keys(x, tiles, index) for x in (kp, vp))
    p = jnp.exp(_chunk_scores(q_chunk, index, keys, key, rule, length) - lse_chunk[..., None])
    g32 = g_chunk.astype(jnp.float32)
    dv = _scatter_keys(dv, jnp.einsum("bnqk,bqnh->bknh", p, g32), tiles, index)
    ds = p * (jnp.einsum("bqnh,bknh->bnqk", g32, values) - d_chunk.transpose(0, 2, 1)[..., None])
    dq = jnp.einsum("bnqk,bknh->bqnh", ds, keys) * scale
    dk = _scatter_keys(
        dk, jnp.einsum("bnqk,bqnh->bknh", ds, q_chunk.astype(jnp.float32)) * scale, tiles, index)
    return (dk, dv), dq

  zeros = jnp.zeros(kp.shape, jnp.float32)
  xs = (_chunks(q, to), _chunks(g, to), _chunks(delta[..., None], to)[..., 0], lse,
        jnp.arange(to // TILE))
  (dk, dv), dq = jax.lax.scan(one, (zeros, zeros), xs)
  return (_unchunk(dq, length).astype(q.dtype), dk[:, :length].astype(k.dtype),
          dv[:, :length].astype(v.dtype))


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def _masked(q, k, v, mask: BlockMask, impl: str):
  if impl == "xla":
    return xla_masked_attention(q, k, v, mask)
  if impl == "flash":
    return by_platform(q, k, v, xla=lambda *a: xla_masked_attention(*a, mask),
                       tpu=lambda *a: _tpu_splash(*a, mask),
                       cuda=lambda *a: _chunked(*a, mask))
  if impl in ("chunked", "flash-gpu-interpret"):  # the GPU kernel is causal-only: chunked there
    return _chunked(q, k, v, mask)
  if impl == "flash-tpu-interpret":
    return _tpu_splash(q, k, v, mask, interpret=True)
  raise ValueError(f"attention: impl must be one of {IMPLS}, got {impl!r}")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False,
              mask: BlockMask | None = None, impl: str = "xla") -> jax.Array:
  """Softmax attention of q over k, v, all [B, T, N, H]; returns [B, T, N, H] in q's dtype.
  Causal, bidirectional (default), or by ``mask`` (a BlockMask over the T positions, not
  together with causal=True). ``impl``: see the module docstring."""
  if mask is not None:
    if causal or mask.length != q.shape[1]:
      raise ValueError(f"attention: mask must cover the {q.shape[1]} positions and come without "
                       f"causal=True, got a mask of {mask.length} and causal={causal}")
    return _masked(q, k, v, mask, impl)
  if impl == "xla":
    return xla_attention(q, k, v, causal)
  if impl == "flash":
    return by_platform(q, k, v, xla=lambda *a: xla_attention(*a, causal),
                       tpu=lambda *a: _tpu_flash(*a, causal),
                       cuda=lambda *a: _gpu_flash(*a, causal))
  if impl == "chunked":
    return _chunked(q, k, v, causal)
  if impl == "flash-tpu-interpret":
    return _tpu_flash_interpreted(q, k, v, causal)
  if impl == "flash-gpu-interpret":
    return _gpu_flash(q, k, v, causal, interpret=True)
  raise ValueError(f"attention: impl must be one of {IMPLS}, got {impl!r}")
