"""`masked:S`: masked-diffusion ancestral sampling (`MaskedDiffusion`), S steps on the grid
t_k = 1 - k / S: from t to s < t each still-masked pixel is unmasked with probability
(alpha(s) - alpha(t)) / (1 - alpha(t)) and drawn from the model's categorical (option
temperature=1.0); the last step unmasks the rest. S network calls (twice with guidance).
Option resample=r: the corrector (`ancestral_loop`), S - 1 more calls. The process supplies
the masking schedule (`process.schedule`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ardiff.processes import categorical, randomness, step_loop
from ardiff.processes.autoregressive import decode
from ardiff.processes.token_samplers.base import (TokenSampler, hidden_as_nan, register_sampler,
                                                  temperature)


def ancestral_loop(logits_fn, keys: jax.Array, tokens: jax.Array, steps, *, mask_id: int,
                   schedule, temperature: float = 1.0,
                   resample: float = 0.0) -> step_loop.StepLoop:
  """Masked-diffusion ancestral sampling from t = 1 to 0 in `steps` steps, as a `StepLoop`
  over int32 tokens [B, L].

  logits_fn: tokens [B, L] -> logits [B, L, V]; keys: per-example keys [B]; tokens: the start,
  mask_id at every position to generate (others are kept: inpainting).
  steps: S, an int, or an int32 scalar (traced: step k runs from t = 1 - k / S to
  1 - (k + 1) / S, computed in the loop, so one program serves every S; `step_loop.run`).
  resample: the corrector (the seeds' "tokens could be re-sampled"): after every step but the
  last, each generated pixel revealed so far is masked again with this probability and redrawn
  from the model given all the others (one more network call per step: NFE 2 S - 1). Whether
  it is on (> 0) is static; its value may be traced.
  """
  if isinstance(resample, (int, float)) and not 0.0 <= resample < 1.0:
    raise ValueError(f"resample must lie in [0, 1), got {resample}")
  corrected = not isinstance(resample, (int, float)) or resample > 0
  tokens = jnp.asarray(tokens, jnp.int32)
  generated = tokens == mask_id  # inpainting: the known pixels are never masked again

  def uniforms(step_keys, salt):  # [B, L], example b from fold_in(step_keys[b], salt)
    return jax.vmap(lambda k: jax.random.uniform(k, tokens.shape[1:]))(
        randomness.step_keys(step_keys, salt))

  def corrector(tokens, step_keys):
    again = generated & (tokens != mask_id) & (uniforms(step_keys, 2) < resample)
    masked = jnp.where(again, mask_id, tokens)
    z = categorical.draw(randomness.step_keys(step_keys, 3), logits_fn(masked), temperature)
    return jnp.where(again, z, tokens)

  def step(k, tokens):
    t = 1.0 - k.astype(jnp.float32) / steps  # the grid 1 - k / S, k = 0 .. S
    s = 1.0 - (k + 1).astype(jnp.float32) / steps
    m_t, m_s = schedule.masked(t), schedule.masked(s)  # (alpha_s - alpha_t) / (1 - alpha_t)
    p_unmask = jnp.where(k == steps - 1, 1.0, (m_t - m_s) / m_t)
    step_keys = randomness.step_keys(keys, k)
    z = categorical.draw(step_keys, logits_fn(tokens), temperature)
    reveal = (tokens == mask_id) & (uniforms(step_keys, 1) < p_unmask)
    tokens = jnp.where(reveal, z, tokens)
    if corrected:
      tokens = jax.lax.cond(k < steps - 1, corrector, lambda t, _: t, tokens, step_keys)
    return tokens

  return step_loop.StepLoop(step, tokens, steps)


def ancestral_sample(logits_fn, keys, tokens, steps, **kwargs) -> jax.Array:
  """`ancestral_loop` run to its end: int32 [B, L]."""
  return step_loop.run(ancestral_loop(logits_fn, keys, tokens, steps, **kwargs))


def ancestral_history(logits_fn, keys, tokens, steps: int, **kwargs):
  """`ancestral_loop` with every state kept: (int32 [B, L], the tokens after every step, after
  its corrector, int32 [steps, B, L]); an int `steps`."""
  return step_loop.trace(ancestral_loop(logits_fn, keys, tokens, steps, **kwargs))


@functools.partial(jax.jit, static_argnames=("model", "schedule", "corrected"))
def _masked_sample(model, params, keys, y, steps, temperature, resample, cond, *, schedule,
                   corrected):
  """`ancestral_sample` of every position with the model: one program for every step count,
  temperature and corrector probability (only the corrector on/off is static)."""
  start = jnp.full((y.shape[0], model.seq_len), model.mask_id, jnp.int32)
  return ancestral_sample(lambda t: decode.model_call(model, params, t, cond, y), keys, start,
                          steps, mask_id=model.mask_id, schedule=schedule,
                          temperature=temperature, resample=resample if corrected else 0.0)


def _resample(spec) -> float:
  resample = spec.get("resample", 0.0)
  if not isinstance(resample, (int, float)) or not 0 <= resample < 1:
    raise ValueError(f"sampler 'masked': resample must be a number in [0, 1), got "
                     f"{resample!r}")
  return float(resample)


def steps(process, spec) -> int:
  if not 1 <= spec.steps:
    raise ValueError(f"sampler 'masked': steps must be >= 1, got {spec.steps}")
  _resample(spec)
  return spec.steps


def nfe(process, spec) -> int:
  return steps(process, spec) + (spec.steps - 1 if _resample(spec) > 0 else 0)


def sample(process, params, keys, labels, spec, cond):
  resample = _resample(spec)
  return _masked_sample(process.model, params, keys, jnp.asarray(labels, jnp.int32),
                        jnp.int32(spec.steps), jnp.float32(temperature(spec)),
                        jnp.float32(resample), cond, schedule=process.schedule,
                        corrected=resample > 0)


def history(process, params, keys, labels, spec):
  start = jnp.full((labels.shape[0], process.seq_len), process.mask_id, jnp.int32)
  _, tokens = ancestral_history(lambda t: process.model.apply(params, t, labels), keys, start,
                                spec.steps, mask_id=process.mask_id, schedule=process.schedule,
                                temperature=temperature(spec), resample=_resample(spec))
  return hidden_as_nan(tokens, tokens == process.mask_id)


register_sampler("masked", TokenSampler({"temperature": 1.0, "resample": 0.0}, steps, sample,
                                        history, nfe=nfe, needs_steps=True,
                                        requires=("any_subset", "masking_schedule")))
