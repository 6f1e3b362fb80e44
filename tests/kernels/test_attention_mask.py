"""BlockMask's dense masks against the layouts written out position by position: causal,
bidirectional, block-causal, and block diffusion's two copies (BD3-LM's block-diagonal,
offset block-causal and block-causal parts), with a class-token prefix and padding."""

from __future__ import annotations

import numpy as np
import pytest

from ardiff.kernels.attention_mask import BlockMask


def test_block_causal_is_j_over_b_at_most_i_over_b():
  for length, b in ((7, 1), (12, 4), (12, 3), (5, 5)):
    i, j = np.arange(length)[:, None], np.arange(length)[None, :]
    np.testing.assert_array_equal(BlockMask.block_causal(length, b).dense(), j // b <= i // b)
  np.testing.assert_array_equal(BlockMask.block_causal(6, 1).dense(), np.tril(np.ones((6, 6))))
  assert BlockMask.block_causal(6, 6).dense().all()
  with pytest.raises(ValueError, match="block_size must be >= 1"):
    BlockMask.block_causal(6, 0)


def test_two_copies_is_block_diffusions_training_mask():
  length, b = 8, 2
  want = np.zeros((2 * length, 2 * length), bool)
  for i in range(2 * length):
    for j in range(2 * length):
      noised_i, noised_j = i < length, j < length
      bi, bj = (i % length) // b, (j % length) // b
      diagonal = noised_i == noised_j and bi == bj  # own block, own copy
      offset = noised_i and not noised_j and bj < bi  # noised sees earlier clean blocks
      causal = not noised_i and not noised_j and bj <= bi  # clean: block-causal
      want[i, j] = diagonal or offset or causal
  np.testing.assert_array_equal(BlockMask.two_copies(length, b).dense(), want)
  # A class token in front: seen by every position, seeing only itself.
  with_class = BlockMask.two_copies(length, b).with_prefix(1).dense()
  np.testing.assert_array_equal(with_class[1:, 1:], want)
  assert with_class[:, 0].all() and not with_class[0, 1:].any()


def test_padding_is_seen_by_no_real_position_and_no_row_is_empty():
  mask = BlockMask.two_copies(4, 2).with_prefix(1)
  dense = mask.padded(12).dense()
  np.testing.assert_array_equal(dense[:9, :9], mask.dense())
  assert not dense[:9, 9:].any() and dense.any(axis=1).all()
  # Tiles of 4: [class, noised 0-2], [noised 3, clean 0-2], [clean 3, padding]: the first
  # never reads the last (clean token 3's block comes after all of its tokens' blocks).
  assert mask.padded(12).tiles_seen(4).tolist() == [[True, True, False]] + [[True] * 3] * 2
  with pytest.raises(ValueError, match="of one length"):
    BlockMask((0, 1), (0,))
