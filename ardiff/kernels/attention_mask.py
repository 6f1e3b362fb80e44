"""Which positions attend to which, as data: a block id and a copy id per position.

    mask = BlockMask.block_causal(length=64, block_size=16)
    mask.dense()          # numpy bool [T, T], allowed[i, j]: query i sees key j

Position i has a block ``block[i]`` and a copy ``copy[i]`` (copy 0 is the *clean* copy, the one
later blocks read). Query i sees key j iff

    block[j] < block[i] and copy[j] == 0     (earlier blocks, clean copy)
    or block[j] == block[i] and copy[j] == copy[i]     (its own block, same copy).

One rule covers every layout the models use (L tokens, blocks of b):
  * causal: block = 0, 1, ..., L-1 (``block_size`` 1); bidirectional: block = 0 everywhere;
  * block-causal: block[i] = i // b, all copy 0 (position i sees j iff j // b <= i // b);
  * block diffusion's training layout (BD3-LM, Arriola et al. 2025): a noised copy (copy 1) and
    a clean copy (copy 0) side by side, each with block[i] = i // b; a noised block sees itself
    and the clean blocks before it, the clean copy is block-causal over itself, and nothing
    reads the noised copy from outside its block (``two_copies``);
  * a prefix seen by everything and seeing only itself (a class token): block -1, copy 0
    (``with_prefix``).
Every query sees at least itself, so no softmax row is empty. The ids are static Python ints
(hashable, so a mask can be a module attribute, a jit-static argument and a custom-VJP
non-differentiable argument); the kernels turn them into arrays, a dense numpy mask (splash
attention) or a per-tile table of key tiles that can be seen (the chunked path).
"""

from __future__ import annotations

import dataclasses

import numpy as np

# A padding position's block: later than every real block, so no real query sees it, while it
# sees the real clean positions and the other padding (its softmax row is never empty).
PAD_BLOCK = 2**30


def allowed(q_block, q_copy, k_block, k_copy):
  """The rule above, elementwise and broadcasting (numpy or jax arrays)."""
  return ((k_block < q_block) & (k_copy == 0)) | ((k_block == q_block) & (k_copy == q_copy))


@dataclasses.dataclass(frozen=True)
class BlockMask:
  """Per-position block and copy ids (tuples of ints of one length T); see the module doc."""

  block: tuple[int, ...]
  copy: tuple[int, ...]

  def __post_init__(self):
    if len(self.block) != len(self.copy) or not self.block:
      raise ValueError(f"BlockMask: block and copy must be non-empty and of one length, got "
                       f"{len(self.block)} and {len(self.copy)}")

  @property
  def length(self) -> int:
    return len(self.block)

  @classmethod
  def block_causal(cls, length: int, block_size: int) -> "BlockMask":
    """i sees j iff j // block_size <= i // block_size (1: causal; length: bidirectional)."""
    if block_size < 1:
      raise ValueError(f"block_size must be >= 1, got {block_size}")
    return cls(tuple(i // block_size for i in range(length)), (0,) * length)

  @classmethod
  def two_copies(cls, length: int, block_size: int) -> "BlockMask":
    """The 2L layout [noised copy, clean copy] of block diffusion training (module doc)."""
    clean = cls.block_causal(length, block_size)
    return cls(clean.block * 2, (1,) * length + clean.copy)

  def with_prefix(self, count: int = 1) -> "BlockMask":
    """``count`` positions in front (block -1, copy 0): seen by all, seeing only themselves."""
    return BlockMask((-1,) * count + self.block, (0,) * count + self.copy)

  def padded(self, length: int) -> "BlockMask":
    """Padded to ``length`` positions that no real query sees (PAD_BLOCK, copy 0)."""
    extra = length - self.length
    return BlockMask(self.block + (PAD_BLOCK,) * extra, self.copy + (0,) * extra)

  def arrays(self) -> tuple[np.ndarray, np.ndarray]:
    """block, copy as int32 arrays [T]."""
    return np.asarray(self.block, np.int32), np.asarray(self.copy, np.int32)

  def dense(self) -> np.ndarray:
    """allowed[i, j] (query i, key j) as a numpy bool [T, T]: the reference for the kernels."""
    block, copy = self.arrays()
    return allowed(block[:, None], copy[:, None], block[None, :], copy[None, :])

  def tiles_seen(self, tile: int) -> np.ndarray:
    """bool [T/tile, T/tile]: whether query tile a sees any key of key tile c (T a multiple of
    tile); a key tile that a query tile never sees need not be computed."""
    t = self.length // tile
    return self.dense().reshape(t, tile, t, tile).any(axis=(1, 3))
