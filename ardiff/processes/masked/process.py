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
  masked:S        ancestral, S steps on t_k = 1 - k / S (`ardiff.processes.token_samplers.masked`);
  confidence:S, ardm:...   as for ARDM (`OrderAgnosticAR`): the network is the same kind.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from ardiff.models.transformer import Transformer
from ardiff.processes import categorical
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
  nll = categorical.token_nll(logits_fn(jnp.where(masked, mask_id, x), y), x)
  weight = -schedule.dalpha(t) / p_masked
  return weight * jnp.sum(jnp.where(masked, nll, 0.0), axis=1)


class MaskedDiffusion(OrderAgnosticAR):
  """Masked diffusion with an injected bidirectional `Transformer` and a `MaskingSchedule`."""

  provides = (*OrderAgnosticAR.provides, "masking_schedule")

  def __init__(self, model: Transformer, p_uncond: float = 0.1,
               data_shape: Sequence[int] | None = None,
               schedule: MaskingSchedule = MaskingSchedule()):
    super().__init__(model, p_uncond=p_uncond, data_shape=data_shape)
    self.schedule = schedule

  def _nll(self, logits_fn, x, y, key):
    return masked_diffusion_loss(logits_fn, x, y, key, self.model.mask_id, self.schedule)
