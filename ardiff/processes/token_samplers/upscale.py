"""`upscale`: coarse-to-fine sampling of the upscale ARDM (`UpscaleAR`; options k=1,
temperature=1.0): per stage a random order per example, k pixels per step (the last step the
remainder); each step draws the revealed pixels' full value from the softmax(logits /
temperature) restricted to their current coarse bin and keeps v // d_s (the law p_s of
`ardiff.processes.autoregressive.upscale`). S * ceil(D / k) network calls (twice with
guidance). The process supplies the stage layout (`process.layout`, a `Stages`).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from ardiff.processes import categorical, randomness, step_loop
from ardiff.processes.autoregressive import decode, orders
from ardiff.processes.token_samplers.base import (TokenSampler, hidden_as_nan, register_sampler,
                                                  temperature)


def stage_steps(keys: jax.Array, length: int, k: int, num_stages: int) -> jax.Array:
  """int32 [B, S, D]: per example and per stage a random order, k pixels per step (the last
  step the remainder); entry [b, s, d] is the step within stage s that reveals pixel d (stage
  s owns steps s * n .. (s + 1) * n - 1, n = ceil(D / k)). Its shape does not depend on k."""
  sizes = orders.uniform_step_sizes(length, k)

  def one(key):
    return jnp.stack([orders.reveal_steps(orders.random_orders(jax.random.fold_in(key, s), 1,
                                                               length)[0], sizes)
                      for s in range(num_stages)])

  return jax.vmap(one)(randomness.setup_keys(keys))


def upscale_loop(logits_fn: Callable[[jax.Array], jax.Array], keys: jax.Array, length: int,
                 layout, k=1, *, temperature: float = 1.0,
                 local_steps: jax.Array | None = None) -> step_loop.StepLoop:
  """S stages of ceil(D / k) steps each as a `StepLoop` over (low, stage): each pixel's lowest
  value in its bin and its stage (-1: hidden), int32 [B, D] both.

  logits_fn: input ids int32 [B, D] (see `Stages.tokens`) -> logits [B, D, L]; keys: per-example
  keys [B]. Step i (over all stages) draws with step_keys(keys, i); each revealed pixel's full
  value from softmax(logits / temperature) restricted to its current coarse bin, keeping its
  value at the stage's precision. k may be traced when `local_steps` (`stage_steps`) is given
  (the trip count is data: one program serves every k).
  """
  if not isinstance(temperature, jax.core.Tracer) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  b = keys.shape[0]
  if local_steps is None:
    local_steps = stage_steps(keys, length, k, layout.num_stages)  # [B, S, D]
  per_stage = (length + k - 1) // k  # n = ceil(D / k), an int or a traced int32
  divisors = jnp.asarray(layout.divisors, jnp.int32)

  def step(i, carry):
    low, stage = carry  # low: the lowest value of each pixel's bin; stage: -1 = hidden
    s = i // per_stage
    reveal = jnp.take(local_steps, s, axis=1) == i - s * per_stage
    logits = logits_fn(layout.tokens(low, stage)).astype(jnp.float32)
    logits = jnp.where(layout.allowed(low, s), logits, -jnp.inf)
    v = categorical.draw(randomness.step_keys(keys, i), logits, temperature)
    d = divisors[s]
    low = jnp.where(reveal, v // d * d, low)
    stage = jnp.where(reveal, s, stage)
    return low, stage

  start = (jnp.zeros((b, length), jnp.int32), jnp.full((b, length), -1, jnp.int32))
  return step_loop.StepLoop(step, start, layout.num_stages * per_stage)


def upscale_decode(logits_fn, keys, length: int, layout, k=1, **kwargs) -> jax.Array:
  """`upscale_loop` run to its end: int32 values [B, D]."""
  return step_loop.run(upscale_loop(logits_fn, keys, length, layout, k, **kwargs))[0]


def upscale_history(logits_fn, keys, length: int, layout, k: int = 1, **kwargs):
  """`upscale_loop` with every state kept: (int32 values [B, D], the input ids after every
  step, int32 [S * n, B, D]); an int k."""
  (low, _), ids = step_loop.trace(upscale_loop(logits_fn, keys, length, layout, k, **kwargs),
                                  lambda carry: layout.tokens(*carry))
  return low, ids


@functools.partial(jax.jit, static_argnames=("model", "layout"))
def _upscale_sample(model, params, keys, y, local_steps, k, temperature, cond, *, layout):
  return upscale_decode(lambda t: decode.model_call(model, params, t, cond, y), keys,
                        model.seq_len, layout, k, temperature=temperature,
                        local_steps=local_steps)


def step_k(process, spec) -> int:
  k = spec.get("k", 1)
  if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= process.seq_len:
    raise ValueError(f"sampler 'upscale': k must be an integer in 1..{process.seq_len}, "
                     f"got {k!r}")
  return k


def steps(process, spec) -> int:
  return process.layout.num_stages * math.ceil(process.seq_len / step_k(process, spec))


def sample(process, params, keys, labels, spec, cond):
  k = step_k(process, spec)  # one program for every k: the plan [B, S, D] and k are data
  return _upscale_sample(process.model, params, keys, jnp.asarray(labels, jnp.int32),
                         stage_steps(keys, process.seq_len, k, process.layout.num_stages),
                         jnp.int32(k), jnp.float32(temperature(spec)), cond,
                         layout=process.layout)


def history(process, params, keys, labels, spec):
  layout = process.layout
  _, ids = upscale_history(lambda t: process.model.apply(params, t, labels), keys,
                           process.seq_len, layout, step_k(process, spec),
                           temperature=temperature(spec))
  return hidden_as_nan(layout.representative(ids), ids == layout.mask_id)


register_sampler("upscale", TokenSampler({"k": 1, "temperature": 1.0}, steps, sample, history,
                                          requires=("coarse_to_fine",)))
