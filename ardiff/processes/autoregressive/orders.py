"""Generation orders and step plans for (parallel) autoregressive decoding.

An *order* is an int array ``[..., m]`` listing positions in the order they are generated.
A *step plan* is a bool array ``[..., S, L]``: ``plan[..., s, i]`` is True when position ``i`` is
revealed at step ``s``. In a complete plan every position is revealed exactly once; in an
inpainting plan the known positions are never revealed (they start revealed).

* contiguous chunks of k: ``chunk_plan(L, k)`` = raster order, k per step;
* random positions, k per step: ``random_plan(key, batch, L, k)`` = random orders, k per step;
* any step sizes (e.g. a budget from :mod:`ardiff.processes.autoregressive.budget`): ``reveal_plan``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def raster_order(length: int) -> jax.Array:
  """The raster order 0, 1, ..., length-1 as int32 [length]."""
  if length < 1:
    raise ValueError(f"length must be >= 1, got {length}")
  return jnp.arange(length, dtype=jnp.int32)


def random_orders(key: jax.Array, batch: int, length: int) -> jax.Array:
  """An independent uniform random permutation of 0..length-1 per example: int32 [batch, length]."""
  if batch < 1 or length < 1:
    raise ValueError(f"batch and length must be >= 1, got batch={batch}, length={length}")
  return jnp.argsort(jax.random.uniform(key, (batch, length)), axis=-1).astype(jnp.int32)


def uniform_step_sizes(n: int, k: int) -> tuple[int, ...]:
  """k positions per step for n positions; when k does not divide n the last step takes n % k."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  if not 1 <= k <= n:
    raise ValueError(f"k (positions per step) must lie in 1..{n}, got {k}")
  sizes = [k] * (n // k)
  if n % k:
    sizes.append(n % k)
  return tuple(sizes)


def check_step_sizes(step_sizes: Sequence[int], total: int) -> tuple[int, ...]:
  """Positive ints summing to `total`, as a tuple; anything else is a ValueError."""
  sizes = tuple(int(s) for s in step_sizes)
  if not sizes or any(s < 1 for s in sizes):
    raise ValueError(f"step_sizes must be a non-empty list of positive ints, got {list(sizes)}")
  if sum(sizes) != total:
    raise ValueError(f"step_sizes must sum to {total} (positions in the order), got "
                     f"sum {sum(sizes)} for {list(sizes)}")
  return sizes


def reveal_steps(
    order: jax.Array, step_sizes: Sequence[int], length: int | None = None
) -> jax.Array:
  """The step that reveals each position, int32 [..., length] (-1: never, e.g. a known one).

  Position order[..., j] is revealed at step s with c_s <= j < c_s + step_sizes[s], c_s the
  sizes before s. The same information as `reveal_plan`, in a shape that does not depend on
  the number of steps S: a decoder that takes it compiles once for every S.

  Args:
    order: int [..., m], distinct positions in 0..length-1 in generation order.
    step_sizes: S positive ints summing to m.
    length: L, the sequence length (default m; give it when the order covers only some
      positions, e.g. the unknown ones when inpainting).
  """
  order = jnp.asarray(order, jnp.int32)
  m = order.shape[-1]
  length = m if length is None else int(length)
  if m > length:
    raise ValueError(f"order has {m} positions, more than length={length}")
  sizes = check_step_sizes(step_sizes, m)
  step_of_rank = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes), jnp.int32)  # [m]

  def one(o):
    return jnp.full((length,), -1, jnp.int32).at[o].set(step_of_rank)

  return jax.vmap(one)(order.reshape(-1, m)).reshape(order.shape[:-1] + (length,))


def reveal_plan(
    order: jax.Array, step_sizes: Sequence[int], length: int | None = None
) -> jax.Array:
  """Bool plan [..., S, length]: step s reveals order[..., c_s : c_s + step_sizes[s]] (the
  arguments of `reveal_steps`)."""
  step_of_pos = reveal_steps(order, step_sizes, length)
  num_steps = len(check_step_sizes(step_sizes, jnp.shape(order)[-1]))
  return step_of_pos[..., None, :] == jnp.arange(num_steps, dtype=jnp.int32)[:, None]


def chunk_plan(length: int, k: int) -> jax.Array:
  """Contiguous chunks: raster order, k per step (last step the remainder). Bool [S, length]."""
  return reveal_plan(raster_order(length), uniform_step_sizes(length, k))


def random_plan(
    key: jax.Array, batch: int, length: int, k: int | None = None,
    step_sizes: Sequence[int] | None = None,
) -> jax.Array:
  """Random positions per example: random orders, then k per step or the given step_sizes.

  Exactly one of k and step_sizes must be given. Returns bool [batch, S, length].
  """
  sizes = _sizes_from(length, k, step_sizes)
  return reveal_plan(random_orders(key, batch, length), sizes)


def _sizes_from(n: int, k: int | None, step_sizes: Sequence[int] | None) -> tuple[int, ...]:
  if (k is None) == (step_sizes is None):
    raise ValueError(f"give exactly one of k and step_sizes, got k={k}, step_sizes={step_sizes}")
  return uniform_step_sizes(n, k) if k is not None else check_step_sizes(step_sizes, n)
