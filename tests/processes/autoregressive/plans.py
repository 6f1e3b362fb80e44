"""Test-only helpers for ARDM plans and bounds (moved out of the library, which never uses
them): a plan that inpaints around known positions, and the Monte-Carlo average of ARDM
estimates."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.processes.autoregressive.objectives import LogitsFn, ardm_loss
from ardiff.processes.autoregressive.orders import _sizes_from, reveal_plan


def inpainting_plan(
    key: jax.Array | None, known_mask: jax.Array, k: int | None = None,
    step_sizes: Sequence[int] | None = None,
) -> jax.Array:
  """A plan over the unknown positions only: bool [B, S, L], never revealing a known position.

  Args:
    key: for a random order over the unknown positions; None for raster order over them.
    known_mask: bool [B, L] (True = known); every row must have the same number n of unknowns.
    k / step_sizes: exactly one; k per step, or sizes summing to n.
  """
  known = np.asarray(known_mask, bool)
  if known.ndim != 2:
    raise ValueError(f"known_mask must be [B, L], got shape {known.shape}")
  unknown_counts = (~known).sum(axis=1)
  if not (unknown_counts == unknown_counts[0]).all() or unknown_counts[0] == 0:
    raise ValueError("known_mask: every row needs the same, nonzero number of unknown positions, "
                     f"got {sorted(set(unknown_counts.tolist()))}")
  b, length = known.shape
  n = int(unknown_counts[0])
  sizes = _sizes_from(n, k, step_sizes)
  if key is None:
    score = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32) / length, (b, length))
  else:
    score = jax.random.uniform(key, (b, length))
  order = jnp.argsort(jnp.where(jnp.asarray(known), -1.0, score), axis=-1)  # known first
  return reveal_plan(order[:, length - n:], sizes, length)


def ardm_bound_mc(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, mask_id: int,
    num_samples: int,
) -> jax.Array:
  """Average of num_samples independent ARDM estimates (t and order per sample): [B] nats."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")

  def body(total, k):
    return total + ardm_loss(logits_fn, x, y, k, mask_id), None

  total, _ = jax.lax.scan(body, jnp.zeros(x.shape[0]), jax.random.split(key, num_samples))
  return total / num_samples
