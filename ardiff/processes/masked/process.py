"""Continuous-time masked diffusion (absorbing state; MD4, Shi et al. 2024; Sahoo et al. 2024).

Forward: at time t every pixel is masked independently with probability 1 - alpha(t)
(`schedules`). The network is ARDM's bidirectional transformer with a mask token; it does not
see t (with an absorbing state the posterior of a masked pixel does not depend on it).

Loss: the continuous-time ELBO, per example in nats,

  -log p(x) <= E_{t ~ U(0,1)} E_{x_t} [ -alpha'(t) / (1 - alpha(t)) sum_{i masked} -log p(x_i | x_t) ],

estimated with one t and one mask per example (t drawn antithetically over the batch, t >= 1e-5
so that the weight stays finite). With u = 1 - alpha(t) it is sum_k B(k, L - k + 1) S_k, S_k the
summed NLL over masks of size k: the ARDM bound, for every schedule (tested by enumeration).

Samplers (the spec grammar of `ardiff.processes.spec`):
  masked:S        ancestral, S steps on t_k = 1 - k / S: from t to s < t each still-masked pixel
                  is unmasked with probability (alpha(s) - alpha(t)) / (1 - alpha(t)) and drawn
                  from the model's categorical (option temperature=1.0); the last step unmasks
                  the rest. S network calls (twice with guidance). Option resample=r: the
                  corrector (`ancestral_sample`), S - 1 more calls.
  confidence:S, ardm:...   as for ARDM (`OrderAgnosticAR`): the network is the same kind.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from ardiff.models.transformer import Transformer
from ardiff.processes import discrete
from ardiff.processes.autoregressive import decode
from ardiff.processes.autoregressive.order_agnostic import OrderAgnosticAR
from ardiff.processes.masked.schedules import MaskingSchedule

T_MIN = 1e-5  # the smallest t drawn by the loss: the weight -alpha'/(1 - alpha) ~ 1/t there


def antithetic_times(key: jax.Array, batch: int) -> jax.Array:
  """t [B] in [T_MIN, 1): one uniform shift of the grid i / B (lower variance than i.i.d.)."""
  u = jnp.mod(jax.random.uniform(key) + jnp.arange(batch) / batch, 1.0)
  return T_MIN + (1.0 - T_MIN) * u


def masked_diffusion_loss(logits_fn, x: jax.Array, y: jax.Array, key: jax.Array, mask_id: int,
                          schedule: MaskingSchedule) -> jax.Array:
  """One-sample estimate of the continuous-time ELBO's NLL bound per example: [B] nats."""
  k_t, k_mask = jax.random.split(key)
  b, length = x.shape
  t = antithetic_times(k_t, b)
  p_masked = schedule.masked(t)
  masked = jax.random.uniform(k_mask, (b, length)) < p_masked[:, None]
  nll = discrete.token_nll(logits_fn(jnp.where(masked, mask_id, x), y), x)
  weight = -schedule.dalpha(t) / p_masked
  return weight * jnp.sum(jnp.where(masked, nll, 0.0), axis=1)


def ancestral_sample(logits_fn, keys: jax.Array, tokens: jax.Array, steps, *, mask_id: int,
                     schedule: MaskingSchedule, temperature: float = 1.0,
                     resample: float = 0.0, return_history: bool = False):
  """Masked-diffusion ancestral sampling from t = 1 to 0 in `steps` steps: int32 [B, L].

  logits_fn: tokens [B, L] -> logits [B, L, V]; keys: per-example keys [B]; tokens: the start,
  mask_id at every position to generate (others are kept: inpainting).
  steps: S, an int, or an int32 scalar (traced: step k runs from t = 1 - k / S to
  1 - (k + 1) / S, computed in the loop, so one program serves every S).
  resample: the corrector (the seeds' "tokens could be re-sampled"): after every step but the
  last, each generated pixel revealed so far is masked again with this probability and redrawn
  from the model given all the others (one more network call per step: NFE 2 S - 1). Whether
  it is on (> 0) is static; its value may be traced.
  return_history: also the tokens after every step (after its corrector), int32 [steps, B, L]
  (needs an int `steps`: a scan over them).
  """
  if isinstance(resample, (int, float)) and not 0.0 <= resample < 1.0:
    raise ValueError(f"resample must lie in [0, 1), got {resample}")
  corrected = not isinstance(resample, (int, float)) or resample > 0
  tokens = jnp.asarray(tokens, jnp.int32)
  generated = tokens == mask_id  # inpainting: the known pixels are never masked again

  def uniforms(step_keys, salt):  # [B, L], example b from fold_in(step_keys[b], salt)
    return jax.vmap(lambda k: jax.random.uniform(k, tokens.shape[1:]))(
        discrete.step_keys(step_keys, salt))

  def corrector(tokens, step_keys):
    again = generated & (tokens != mask_id) & (uniforms(step_keys, 2) < resample)
    masked = jnp.where(again, mask_id, tokens)
    z = discrete.draw(discrete.step_keys(step_keys, 3), logits_fn(masked), temperature)
    return jnp.where(again, z, tokens)

  def step(k, tokens):
    t = 1.0 - k.astype(jnp.float32) / steps  # the grid 1 - k / S, k = 0 .. S
    s = 1.0 - (k + 1).astype(jnp.float32) / steps
    m_t, m_s = schedule.masked(t), schedule.masked(s)  # (alpha_s - alpha_t) / (1 - alpha_t)
    p_unmask = jnp.where(k == steps - 1, 1.0, (m_t - m_s) / m_t)
    step_keys = discrete.step_keys(keys, k)
    z = discrete.draw(step_keys, logits_fn(tokens), temperature)
    reveal = (tokens == mask_id) & (uniforms(step_keys, 1) < p_unmask)
    tokens = jnp.where(reveal, z, tokens)
    if corrected:
      tokens = jax.lax.cond(k < steps - 1, corrector, lambda t, _: t, tokens, step_keys)
    return tokens

  if not return_history:
    return jax.lax.fori_loop(0, jnp.asarray(steps, jnp.int32), step, tokens)
  scan_step = lambda tokens, k: (lambda out: (out, out))(step(k, tokens))  # noqa: E731
  return jax.lax.scan(scan_step, tokens, jnp.arange(steps, dtype=jnp.int32))


@functools.partial(jax.jit, static_argnames=("model", "schedule", "corrected"))
def _masked_sample(model, params, keys, y, steps, temperature, resample, cond, *, schedule,
                   corrected):
  """`ancestral_sample` of every position with the model: one program for every step count,
  temperature and corrector probability (only the corrector on/off is static)."""
  start = jnp.full((y.shape[0], model.seq_len), model.mask_id, jnp.int32)
  return ancestral_sample(lambda t: decode.model_call(model, params, t, cond, y), keys, start,
                          steps, mask_id=model.mask_id, schedule=schedule,
                          temperature=temperature, resample=resample if corrected else 0.0)


class MaskedDiffusion(OrderAgnosticAR):
  """Masked diffusion with an injected bidirectional `Transformer` and a `MaskingSchedule`."""

  samplers = {**OrderAgnosticAR.samplers, "masked": {"temperature": 1.0, "resample": 0.0}}
  _needs_steps = ("confidence", "masked")

  def __init__(self, model: Transformer, p_uncond: float = 0.1,
               data_shape: Sequence[int] | None = None,
               schedule: MaskingSchedule = MaskingSchedule()):
    super().__init__(model, p_uncond=p_uncond, data_shape=data_shape)
    self.schedule = schedule

  def _nll(self, logits_fn, x, y, key):
    return masked_diffusion_loss(logits_fn, x, y, key, self.model.mask_id, self.schedule)

  def _steps(self, spec):
    if spec.name == "masked":
      if not 1 <= spec.steps:
        raise ValueError(f"sampler 'masked': steps must be >= 1, got {spec.steps}")
      resample = spec.get("resample", 0.0)
      if not isinstance(resample, (int, float)) or not 0 <= resample < 1:
        raise ValueError(f"sampler 'masked': resample must be a number in [0, 1), got "
                         f"{resample!r}")
      return spec.steps + (spec.steps - 1 if resample > 0 else 0)
    return super()._steps(spec)

  def _decode(self, params, keys, labels, spec, cond, return_history=False):
    if spec.name != "masked":
      return super()._decode(params, keys, labels, spec, cond)
    resample = float(spec.get("resample", 0.0))
    if not return_history:
      return _masked_sample(self.model, params, keys, jnp.asarray(labels, jnp.int32),
                            jnp.int32(spec.steps), jnp.float32(spec.get("temperature", 1.0)),
                            jnp.float32(resample), cond, schedule=self.schedule,
                            corrected=resample > 0)
    start = jnp.full((labels.shape[0], self.seq_len), self.mask_id, jnp.int32)
    return ancestral_sample(lambda t: decode.model_call(self.model, params, t, cond, labels),
                            keys, start, spec.steps, mask_id=self.mask_id,
                            schedule=self.schedule, temperature=spec.get("temperature", 1.0),
                            resample=resample, return_history=True)

  def _history(self, params, keys, labels, spec):
    if spec.name != "masked":
      return super()._history(params, keys, labels, spec)
    return self._decode(params, keys, labels, spec, None, return_history=True)[1]
