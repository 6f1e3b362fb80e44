"""A small pre-LN transformer over token sequences, causal or bidirectional.

Causal mode (raster autoregression): ``apply(params, x, y)`` with ``x`` int ``[B, L]`` returns
logits ``[B, L, V]`` where position ``i`` holds ``log p(x_i | x_<i, y)`` (unnormalised). The
sequence is shifted right internally: the input at position 0 is the class embedding, the input
at position ``i > 0`` is the embedding of ``x_{i-1}``, so ``x_{L-1}`` is never read.

Bidirectional mode (order-agnostic ARDM): ``x`` holds the mask id ``V`` (= ``vocab_size``) at
hidden positions; a class token is prepended and the logits ``[B, L, V]`` are read off the ``L``
token positions. Nothing is masked in attention.

Attention over the whole sequence is :func:`ardiff.kernels.attention.attention` (``attention``
attribute: XLA's, or flash attention chosen per platform when the program is lowered), and a
decoding step's is :func:`ardiff.kernels.decode_attention.decode_attention` (``decode_attention``
attribute: XLA's over every cache slot, or a kernel that reads only the filled prefix). The
decoding cache is an explicit pytree, heads before positions so the kernels read it where it
lies: ``{"k": (depth arrays [B, heads, C, head_dim]), "v": same}`` with C = ``seq_len`` rounded
up to a multiple of 16 (``decode_attention.cache_length``; the extra slots are never filled),
preallocated by :func:`init_cache` and filled one position at a time by
:meth:`Transformer.decode_step` (causal mode only), or a block of ``block_size`` positions at a
time by :meth:`Transformer.decode_block` (blockwise AR; block diffusion, whose class token has
cache slot 0). Attention by blocks is a ``kernels.attention_mask.BlockMask`` (``block_size``;
``attention_mask()``); a block's b > 1 queries use XLA's decode attention over every slot.

Labels ``y`` are ``0..num_classes-1``, or ``num_classes`` for the null label
(classifier-free guidance).

Mixed precision (``dtype=jnp.bfloat16``): matmuls, layer norms and activations run in ``dtype``;
parameters stay float32, attention softmax and the returned logits are float32 (so losses and
sampling probabilities are computed in float32), and the KV cache is held in ``dtype``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ardiff.kernels import attention as full_attention
from ardiff.kernels import decode_attention as decode_kernels
from ardiff.kernels.attention_mask import BlockMask

Cache = dict[str, tuple[jax.Array, ...]]  # {"k": per-layer arrays, "v": per-layer arrays}


class Block(nn.Module):
  """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x)), with residual dropout."""

  width: int
  heads: int
  mlp_ratio: int
  dropout: float
  dtype: Any = jnp.float32
  causal: bool = False
  attention: str = "xla"
  decode_attention: str = "xla"

  def setup(self):
    if self.width % self.heads:
      raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    self.ln1 = nn.LayerNorm(dtype=self.dtype)
    self.qkv = dense(3 * self.width)
    self.proj = dense(self.width)
    self.ln2 = nn.LayerNorm(dtype=self.dtype)
    self.fc1 = dense(self.mlp_ratio * self.width)
    self.fc2 = dense(self.width)
    self.drop = nn.Dropout(self.dropout)

  def _qkv(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, T, W] -> q, k, v each [B, T, heads, head_dim]."""
    b, t, _ = h.shape
    qkv = self.qkv(self.ln1(h)).reshape(b, t, 3, self.heads, self.width // self.heads)
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def _attend(self, q: jax.Array, k: jax.Array, v: jax.Array,
              mask: BlockMask | None) -> jax.Array:
    """Softmax attention of q over k, v [B, T, heads, hd] (causal or not, or by ``mask``);
    returns [B, T, W]. The logits and softmax are float32 whatever the compute dtype (a bf16
    exp-sum over hundreds of positions would lose the small weights)."""
    out = full_attention.attention(q, k, v, causal=self.causal and mask is None, mask=mask,
                                   impl=self.attention)
    b, t = out.shape[:2]
    return out.reshape(b, t, self.width)

  def _finish(self, h: jax.Array, attn: jax.Array, train: bool) -> jax.Array:
    h = h + self.drop(self.proj(attn), deterministic=not train)
    mlp = self.fc2(nn.gelu(self.fc1(self.ln2(h))))
    return h + self.drop(mlp, deterministic=not train)

  def __call__(self, h: jax.Array, train: bool = False,
               mask: BlockMask | None = None) -> jax.Array:
    q, k, v = self._qkv(h)
    return self._finish(h, self._attend(q, k, v, mask), train)

  def decode(
      self, h: jax.Array, pos: jax.Array, k_cache: jax.Array, v_cache: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Q positions pos..pos+Q-1 at once: h [B, Q, W]; this layer's caches [B, heads, C,
    head_dim]. Their keys and values go into slots pos.., and each of them attends to slots
    0..pos+Q-1 (the cache before pos, and the Q positions both ways)."""
    q, k, v = self._qkv(h)  # [B, Q, heads, hd]
    at = (0, 0, pos, 0)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k.swapaxes(1, 2).astype(k_cache.dtype), at)
    v_cache = jax.lax.dynamic_update_slice(v_cache, v.swapaxes(1, 2).astype(v_cache.dtype), at)
    b, count = h.shape[:2]
    filled = jnp.full((b,), pos + count, jnp.int32)  # positions 0..pos+Q-1 are in the cache
    if count == 1:
      attn = decode_kernels.decode_attention(q[:, 0], k_cache, v_cache, filled,
                                             impl=self.decode_attention)
    else:  # the Pallas decode kernels take one query: XLA's over every slot for a block
      attn = decode_kernels.xla_block_decode(q.astype(k_cache.dtype), k_cache, v_cache, filled)
    out = self._finish(h, attn.reshape(b, count, self.width).astype(h.dtype), train=False)
    return out, k_cache, v_cache


class Transformer(nn.Module):
  """Class-conditional transformer over ``seq_len`` tokens with values ``0..vocab_size-1``.

  Attributes:
    vocab_size: V, number of token values (the mask id is V in bidirectional mode).
    seq_len: L, sequence length.
    num_classes: labels 0..num_classes-1; num_classes is the null label.
    width, depth, heads, mlp_ratio: model size.
    dropout: dropout rate on embeddings and residual branches (active when train=True).
    causal: True for raster AR (shifted, causal attention), False for bidirectional ARDM.
    dtype: compute dtype (see ``ardiff.precision``); parameters and logits stay float32.
    remat: recompute each block's activations in the backward pass instead of storing them
      (``nn.remat``), trading compute for memory; same gradients. How much memory it saves is
      up to XLA's scheduler (XLA:CPU's estimate at L = 784 drops only ~5%); measure on the
      accelerator before relying on it.
    attention: attention over the whole sequence (training, evaluation, and every step of the
      bidirectional samplers), one of ``kernels.attention.IMPLS``: "xla" (default; the maps
      materialised) or "flash" (TPU / GPU flash kernels chosen when lowered, XLA's on CPU;
      lowered and interpreter-tested, not yet timed on a device). Same parameters either way.
    decode_attention: attention of a KV-cache decode step, one of
      ``kernels.decode_attention.IMPLS``: "xla" (all slots, the empty ones masked) or "pallas"
      (TPU / GPU kernels that read only the filled prefix, chosen when lowered; XLA's on CPU).
    input_vocab_size: bidirectional mode only: the number of input token ids (embedding rows),
      for processes whose inputs are richer than the V output values (the upscale ARDM's
      coarse-value tokens); the head still outputs V logits and the process chooses its own
      mask id (``mask_id`` is then not the one it reads). None (default): V + 1, the values
      and the mask id V, exactly as before.
    block_size: b, dividing seq_len: attention by blocks of b tokens (``attention_mask``; token
      i sees token j iff j // b <= i // b). Causal mode: blockwise AR, the input shifted by one
      block (the class embedding at block 0's b positions); None or 1 is raster AR, exactly as
      before. Bidirectional mode: None (default) is full attention; b is block-causal with the
      class token a block of its own in front (seen by all, seeing only itself, so a block
      decode can cache it), and ``clean=`` gives block diffusion's two-copy training forward.
  """

  vocab_size: int
  seq_len: int
  num_classes: int
  width: int = 128
  depth: int = 4
  heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0
  causal: bool = True
  dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "xla"
  decode_attention: str = "xla"
  input_vocab_size: int | None = None
  block_size: int | None = None

  def attention_mask(self, two_copies: bool = False) -> BlockMask | None:
    """The BlockMask of the full forward (``two_copies``: of [class, noised L, clean L]); None
    where ``causal`` alone says it (raster AR, full bidirectional)."""
    b = self.block_size
    if self.causal:
      return None if b in (None, 1) else BlockMask.block_causal(self.seq_len, b)
    if b is None:
      return None
    layout = BlockMask.two_copies if two_copies else BlockMask.block_causal
    return layout(self.seq_len, b).with_prefix(1)

  @property
  def mask_id(self) -> int:
    """Token id of a hidden position (bidirectional mode)."""
    return self.vocab_size

  def setup(self):
    if self.attention not in full_attention.IMPLS:
      raise ValueError(f"attention must be one of {full_attention.IMPLS}, got {self.attention!r}")
    if self.decode_attention not in decode_kernels.IMPLS:
      raise ValueError(f"decode_attention must be one of {decode_kernels.IMPLS}, got "
                       f"{self.decode_attention!r}")
    b = self.block_size
    if b is not None and not (isinstance(b, int) and b >= 1 and self.seq_len % b == 0):
      raise ValueError(f"block_size must be None or a positive divisor of seq_len={self.seq_len}"
                       f", got {b!r}")
    init = nn.initializers.normal(0.02)
    if self.input_vocab_size is not None and (self.causal or self.input_vocab_size < 1):
      raise ValueError("input_vocab_size must be None (causal) or an int >= 1 (bidirectional), "
                       f"got {self.input_vocab_size!r} with causal={self.causal}")
    n_tok = self.vocab_size if self.causal else self.vocab_size + 1
    if self.input_vocab_size is not None:
      n_tok = self.input_vocab_size
    n_pos = self.seq_len if self.causal else self.seq_len + 1
    self.tok_emb = nn.Embed(n_tok, self.width, embedding_init=init, dtype=self.dtype)
    self.cls_emb = nn.Embed(self.num_classes + 1, self.width, embedding_init=init,
                            dtype=self.dtype)
    self.pos_emb = self.param("pos_emb", init, (n_pos, self.width))
    # `train` and `mask` (arguments 3 and 4, counting self) are Python values: static.
    block = nn.remat(Block, static_argnums=(2, 3)) if self.remat else Block
    self.blocks = [
        block(self.width, self.heads, self.mlp_ratio, self.dropout, self.dtype, self.causal,
              self.attention, self.decode_attention, name=f"block_{i}")
        for i in range(self.depth)
    ]
    self.ln_f = nn.LayerNorm(dtype=self.dtype)
    self.head = nn.Dense(self.vocab_size, dtype=self.dtype)
    self.drop = nn.Dropout(self.dropout)

  def __call__(self, tokens: jax.Array, y: jax.Array, train: bool = False,
               clean: jax.Array | None = None) -> jax.Array:
    """tokens int [B, L], y int [B] -> logits [B, L, V].

    ``clean`` int [B, L] (bidirectional mode with block_size only): block diffusion's training
    forward over [class, tokens (noised), clean] with ``attention_mask(two_copies=True)``: the
    noised block k sees itself and the clean blocks < k, so one call gives every block's
    logits (read off the noised copy) as if the earlier blocks were decoded clean."""
    length = tokens.shape[1]
    if length != self.seq_len:
      raise ValueError(f"tokens: expected length seq_len={self.seq_len}, got shape {tokens.shape}")
    if clean is not None and (self.causal or self.block_size is None
                              or clean.shape != tokens.shape):
      raise ValueError(f"clean: needs a bidirectional Transformer with block_size and the "
                       f"tokens' shape {tokens.shape}, got causal={self.causal}, block_size="
                       f"{self.block_size} and shape {clean.shape}")
    cls = self.cls_emb(y)[:, None, :]
    pos_emb = self.pos_emb[None].astype(self.dtype)
    if self.causal:
      shift = self.block_size or 1  # block k reads block k-1; block 0 the class
      h = jnp.concatenate([jnp.repeat(cls, shift, axis=1), self.tok_emb(tokens[:, :-shift])],
                          axis=1)
    else:
      h = jnp.concatenate([cls, self.tok_emb(tokens)], axis=1)
    h = h + pos_emb
    if clean is not None:  # the clean copy at the same positions
      h = jnp.concatenate([h, self.tok_emb(clean) + pos_emb[:, 1:]], axis=1)
    h = self.drop(h, deterministic=not train)
    mask = self.attention_mask(two_copies=clean is not None)
    for block in self.blocks:
      h = block(h, train, mask)
    logits = self.head(self.ln_f(h)).astype(jnp.float32)
    return logits if self.causal else logits[:, 1:length + 1]

  def decode_step(
      self, prev_tokens: jax.Array, pos: jax.Array, cache: Cache, y: jax.Array
  ) -> tuple[jax.Array, Cache]:
    """One causal step with the cache (no dropout).

    Args:
      prev_tokens: int [B], the token x_{pos-1} (ignored at pos == 0, where the class is read).
      pos: int scalar (may be traced), the position whose distribution is wanted.
      cache: {"k", "v"}, each a tuple of depth arrays [B, heads, C, head_dim], filled for
        positions < pos (see init_cache).
      y: int [B] labels (num_classes = null).

    Returns:
      logits [B, V] for x_pos given x_<pos and y, and the cache with position pos filled.
    """
    if not self.causal:
      raise ValueError("decode_step needs a causal Transformer (causal=True)")
    pos = jnp.asarray(pos, jnp.int32)
    tok = self.tok_emb(jnp.clip(prev_tokens, 0, self.vocab_size - 1))
    h = jnp.where(pos == 0, self.cls_emb(y), tok)
    pos_emb = jax.lax.dynamic_index_in_dim(self.pos_emb, pos, keepdims=False).astype(self.dtype)
    h = (h + pos_emb)[:, None, :]
    ks, vs = [], []
    for block, k_cache, v_cache in zip(self.blocks, cache["k"], cache["v"]):
      h, k_cache, v_cache = block.decode(h, pos, k_cache, v_cache)
      ks.append(k_cache)
      vs.append(v_cache)
    logits = self.head(self.ln_f(h))[:, 0].astype(jnp.float32)
    return logits, {"k": tuple(ks), "v": tuple(vs)}

  def decode_block(
      self, tokens: jax.Array, index: jax.Array, cache: Cache, y: jax.Array
  ) -> tuple[jax.Array, Cache]:
    """Block ``index`` (tokens index*b .. index*b+b-1) in one call with the cache (no dropout):
    its b positions attend to the cached earlier blocks and to each other, and their keys and
    values are written into the cache (over whatever an earlier call for this block wrote).

    Args:
      tokens: int [B, b]. Causal mode: block index-1's tokens (ignored at index 0, where the
        class is read); b = block_size or 1. Bidirectional mode (block_size needed): block
        index's own tokens (mask ids where hidden); the class token's keys and values are
        (re)written at cache slot 0, the block's at 1 + index*b.
      index: int scalar (may be traced), the block.
      cache: from init_cache, filled for the blocks < index.
      y: int [B] labels (num_classes = null).

    Returns:
      logits [B, b, V] for block index's tokens (the full forward's, with ``attention_mask``),
      and the cache with the block written.
    """
    b = self.block_size or 1
    if tokens.ndim != 2 or tokens.shape[1] != b or (not self.causal and self.block_size is None):
      raise ValueError(f"decode_block: tokens must be [B, block_size={self.block_size}] (a "
                       f"bidirectional Transformer needs a block_size), got {tokens.shape}")
    start = jnp.asarray(index, jnp.int32) * b
    cls = self.cls_emb(y)[:, None, :]
    h = self.tok_emb(jnp.clip(tokens, 0, self.tok_emb.num_embeddings - 1))
    first = start if self.causal else start + 1  # the block's first position and cache slot
    h = h + jax.lax.dynamic_slice_in_dim(self.pos_emb, first, b).astype(self.dtype)
    if self.causal:
      h = jnp.where(start == 0, cls + self.pos_emb[:b].astype(self.dtype), h)
    else:
      h_cls = cls + self.pos_emb[:1].astype(self.dtype)
    ks, vs = [], []
    for block, k_cache, v_cache in zip(self.blocks, cache["k"], cache["v"]):
      if not self.causal:  # the class token sees only itself: slot 0
        h_cls, k_cache, v_cache = block.decode(h_cls, jnp.int32(0), k_cache, v_cache)
      h, k_cache, v_cache = block.decode(h, first, k_cache, v_cache)
      ks.append(k_cache)
      vs.append(v_cache)
    logits = self.head(self.ln_f(h)).astype(jnp.float32)
    return logits, {"k": tuple(ks), "v": tuple(vs)}


def init_cache(model: Transformer, batch_size: int, dtype=None,
               slots: int | None = None) -> Cache:
  """Zero KV cache {"k": (depth arrays), "v": (depth arrays)}, each [batch, heads, C, head_dim]
  with C = ``decode_attention.cache_length(seq_len)`` (or ``slots``: a shorter cache for the
  positions < slots, as in a segment of `decode_attention.prefix_segments`), in ``dtype``
  (default: the model's compute dtype, which is what the keys and values are).

  One array per layer rather than one stacked [depth, ...] array: slicing a layer out of a
  stacked carry makes XLA copy it every step (measured 2-3x slower decoding at L = 784 on CPU);
  ``jnp.stack(cache["k"])`` gives the stacked view.
  """
  if model.width % model.heads:
    raise ValueError(f"width {model.width} must be divisible by heads {model.heads}")
  full = decode_kernels.cache_length(model.seq_len + (not model.causal))  # + the class token
  shape = (batch_size, model.heads, slots or full, model.width // model.heads)
  zeros = tuple(jnp.zeros(shape, dtype or model.dtype) for _ in range(model.depth))
  return {"k": zeros, "v": zeros}
