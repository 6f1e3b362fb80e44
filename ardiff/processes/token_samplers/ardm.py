"""`ardm`: order-agnostic decoding (ARDM) by a fixed plan, k pixels per step drawn
independently from the bidirectional model's categoricals. Options:

  k=4                      k pixels per step (the last step takes the remainder): ceil(L/k) steps;
  order=random|contiguous  random positions per example (default) or raster chunks;
  sizes=(1,7,56)           explicit step sizes summing to L;
  dp=8                     8 steps with sizes from the dynamic program: resolve it first with
                           `budget.resolve_dp(spec, step_losses)`, which adds `sizes`;
  temperature=1.0.
Without k, sizes or dp, one pixel per step (L steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ardiff.processes import randomness
from ardiff.processes.autoregressive import decode, orders
from ardiff.processes.token_samplers.base import (TokenSampler, plan_history, register_sampler,
                                                  temperature)

OPTIONS = {"k": None, "order": "random", "sizes": None, "dp": None, "temperature": 1.0}


def _check_dp(dp, length: int) -> None:
  if not isinstance(dp, int) or not 1 <= dp <= length:
    raise ValueError(f"sampler 'ardm': dp must be an integer in 1..{length}, got {dp!r}")


def step_sizes(process, spec) -> tuple[int, ...]:
  """The number of pixels each step reveals, from the spec's k, sizes or dp."""
  length = process.seq_len
  k, sizes, dp = spec.get("k"), spec.get("sizes"), spec.get("dp")
  order = spec.get("order", "random")
  if order not in ("random", "contiguous"):
    raise ValueError(f"sampler 'ardm': order must be random or contiguous, got {order!r}")
  if k is not None and sizes is not None:
    raise ValueError("sampler 'ardm': give k or sizes, not both")
  if sizes is not None:
    sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,)
    if dp is not None and len(sizes) != dp:
      raise ValueError(f"sampler 'ardm': dp={dp} but {len(sizes)} sizes")
    return orders.check_step_sizes(sizes, length)
  if dp is not None:
    _check_dp(dp, length)
    raise ValueError(f"sampler 'ardm:dp={dp}' needs step sizes from the dynamic program: "
                     "resolve it with ardiff.processes.autoregressive.budget.resolve_dp("
                     "spec, step_losses) first (or give sizes=...)")
  if k is None:
    k = 1
  if not isinstance(k, int) or not 1 <= k <= length:
    raise ValueError(f"sampler 'ardm': k must be an integer in 1..{length}, got {k!r}")
  return orders.uniform_step_sizes(length, k)


def steps(process, spec) -> int:
  dp = spec.get("dp")
  if dp is not None and spec.get("sizes") is None:  # not resolved yet: its count is known
    _check_dp(dp, process.seq_len)
    return dp
  return len(step_sizes(process, spec))


def reveal_steps(process, keys, spec) -> jax.Array:
  """The step that reveals each position: int32 [B, L] (a shape that does not depend on the
  number of steps, so every k shares one compiled decoder)."""
  sizes, length, batch = step_sizes(process, spec), process.seq_len, keys.shape[0]
  if spec.get("order", "random") == "contiguous":
    return jnp.broadcast_to(orders.reveal_steps(orders.raster_order(length), sizes),
                            (batch, length))
  # a random order per example, drawn from that example's own key
  return jax.vmap(lambda k: orders.reveal_steps(orders.random_orders(k, 1, length)[0],
                                                sizes))(randomness.setup_keys(keys))


def sample(process, params, keys, labels, spec, cond):
  return decode.reveal_step_sample(process.model, params, keys, labels,
                                   reveal_steps(process, keys, spec),
                                   len(step_sizes(process, spec)),
                                   temperature=temperature(spec), cond=cond)


def history(process, params, keys, labels, spec):
  tokens = sample(process, params, keys, labels, spec, None)
  return plan_history(tokens, reveal_steps(process, keys, spec), len(step_sizes(process, spec)))


register_sampler("ardm", TokenSampler(OPTIONS, steps, sample, history,
                                       requires=("any_subset",)))
