"""The token-sampler contract and its registry: how a token process (`TransformerProcess`)
turns a spec such as ``ardm:k=4`` into samples, a step count and a step history.

A sampler is a `TokenSampler` registered under its spec name (one file per sampler in this
package, one import line in `__init__.py`); a process takes every sampler whose ``requires``
its ``provides`` covers. Every function takes the process first (its model, seq_len L, mask_id, ...):

    steps(process, spec) -> S        the number of steps (and the length of the history); it
                                     checks the spec's options and raises ValueError naming
                                     the sampler;
    nfe(process, spec) -> int        network evaluations without guidance (default: S);
    sample(process, params, keys, labels, spec, cond) -> int32 tokens [B, L]
                                     per-example keys [B], labels [B], `cond` the guidance
                                     (`guidance.guidance_cond`, or None); traced;
    history(process, params, keys, labels, spec) -> float32 [S, B, L]
                                     the state after each step in data space (integer levels
                                     as floats), NaN where a pixel is still hidden; entry S - 1
                                     is `sample` with the same keys (unguided); traced.

``options`` maps each option to its default; ``needs_steps``: the spec must give a step count
(``confidence:8``); ``greedy``: temperature 0 (argmax) is allowed; ``requires``: what the
process must provide (`TransformerProcess.provides`), all of it:

    "next_pixel"        p(x_i | x_<i) in raster order (raster AR, and the bidirectional
                        network trained on raster prefixes);
    "any_subset"        p(x_i | x_S) for any revealed set S (ARDM, masked diffusion);
    "masking_schedule"  a masking schedule alpha(t) (masked diffusion);
    "coarse_to_fine"    a pixel's finer level given its coarse bin (upscale ARDM).

A process takes every registered sampler whose requirements it provides, so a new sampler is its
file and its import line, with no edit to any process.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ardiff.registry import Registry


class TokenSampler(NamedTuple):
  options: dict[str, Any]
  steps: Callable[..., int]
  sample: Callable[..., jax.Array]
  history: Callable[..., jax.Array]
  nfe: Callable[..., int] | None = None  # None: one network call per step
  needs_steps: bool = False
  greedy: bool = False
  requires: tuple[str, ...] = ()  # what a process must provide to be sampled by it


TOKEN_SAMPLERS: Registry[TokenSampler] = Registry("token sampler")


def register_sampler(name: str, sampler: TokenSampler) -> TokenSampler:
  """Register `sampler` under the spec name `name` (a sampler file's last line)."""
  return TOKEN_SAMPLERS.register(name)(sampler)


def samplers_for(provides: tuple[str, ...]) -> tuple[str, ...]:
  """The registered samplers (in registration order) whose requirements `provides` covers."""
  return tuple(name for name in TOKEN_SAMPLERS.names()
               if set(TOKEN_SAMPLERS.get(name).requires) <= set(provides))


def hidden_as_nan(values: jax.Array, hidden: jax.Array) -> jax.Array:
  """float32 values with NaN where `hidden` (the history's data-space form)."""
  return jnp.where(hidden, jnp.nan, jnp.asarray(values, jnp.float32))


def plan_history(tokens: jax.Array, reveal_step: jax.Array, num_steps: int) -> jax.Array:
  """The history of a sample whose pixels are revealed once, by a known plan: tokens [B, L],
  reveal_step int [B, L] or [L] (the step that reveals each position) -> float32 [S, B, L],
  position i shown from step reveal_step[i] on (raster and ARDM: sampling draws each pixel
  once and never changes it, so the sample and the plan are the whole history)."""
  step = jnp.arange(num_steps, dtype=jnp.int32)[:, None, None]
  reveal_step = jnp.broadcast_to(jnp.asarray(reveal_step, jnp.int32), tokens.shape)
  return hidden_as_nan(jnp.broadcast_to(tokens, (num_steps, *tokens.shape)),
                       ~(reveal_step[None] <= step))


def temperature(spec) -> Any:
  return spec.get("temperature", 1.0)
