"""Per-example randomness, shared by every process: example b draws with its own key (folded
with the step), so a sample does not depend on the batch it was drawn in, nor on how the batch
is split over devices (the contract test checks both).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def example_keys(key: jax.Array, batch: int) -> jax.Array:
  """Per-example keys [B] from one key (a [B] key array passes through)."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if key.ndim == 1 and key.shape[0] == batch:
    return key
  if key.ndim != 0:
    raise ValueError(f"key must be one key or [{batch}] per-example keys, got shape {key.shape}")
  return jax.random.split(key, batch)


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
  """The keys of step `step` for every example: fold_in(keys[b], step)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)


# Step keys fold in the step index 0..S-1; per-example draws made once before the loop (the
# initial noise, the generation order) fold in this instead, far beyond any step index.
SETUP_STEP = 2**31 - 1


def setup_keys(keys: jax.Array) -> jax.Array:
  """Per-example keys for what is drawn once before the sampling loop."""
  return step_keys(keys, SETUP_STEP)
