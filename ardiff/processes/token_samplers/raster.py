"""`raster`: one pixel per step in raster order, L steps (option temperature=1.0).

A causal model decodes with its KV cache (`decode.raster_sample`); a bidirectional one
(`RasterBidirectional`) reruns the model on the revealed prefix every step (the plan of one
position per step, `decode.order_agnostic_sample`), as no cache is possible there.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.autoregressive import decode, orders
from ardiff.processes.token_samplers.base import (TokenSampler, plan_history, register_sampler,
                                                  temperature)


def steps(process, spec) -> int:
  return process.seq_len


def sample(process, params, keys, labels, spec, cond):
  if process.causal:
    return decode.raster_sample(process.model, params, keys, labels,
                                temperature=temperature(spec), cond=cond)
  length = process.seq_len
  plan = jnp.broadcast_to(orders.chunk_plan(length, 1), (labels.shape[0], length, length))
  return decode.order_agnostic_sample(process.model, params, keys, labels, plan,
                                      temperature=temperature(spec), cond=cond)


def history(process, params, keys, labels, spec):
  tokens = sample(process, params, keys, labels, spec, None)
  return plan_history(tokens, jnp.arange(process.seq_len), process.seq_len)


register_sampler("raster", TokenSampler({"temperature": 1.0}, steps, sample, history,
                                         requires=("next_pixel",)))
