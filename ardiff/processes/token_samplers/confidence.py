"""`confidence:S`: confidence-ordered parallel decoding (MaskGIT;
`ardiff.processes.autoregressive.confidence`): the model chooses which hidden positions to
reveal, the most confident first, in S steps (a step count is required). Options:

  schedule=cosine|uniform  positions per step (MaskGIT's cosine: few first, many last);
  temperature=1.0          candidates from softmax(logits / temperature); 0: argmax (greedy);
  noise=0.0                Gumbel noise on the confidences, annealed to 0 over the steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from ardiff.processes.autoregressive import confidence, decode
from ardiff.processes.token_samplers.base import (TokenSampler, hidden_as_nan, register_sampler,
                                                  temperature)


def reveal_sizes(process, spec) -> tuple[int, ...]:
  """Positions revealed per step."""
  noise = spec.get("noise", 0.0)
  if not isinstance(noise, (int, float)) or noise < 0:
    raise ValueError(f"sampler 'confidence': noise must be a number >= 0, got {noise!r}")
  try:
    return confidence.reveal_schedule(process.seq_len, spec.steps,
                                      spec.get("schedule", "cosine"))
  except ValueError as e:
    raise ValueError(f"sampler 'confidence': {e}") from None


def steps(process, spec) -> int:
  return len(reveal_sizes(process, spec))


def sample(process, params, keys, labels, spec, cond):  # one program for every step count
  return decode.confidence_sample(process.model, params, keys, labels,
                                  reveal_sizes(process, spec), temperature=temperature(spec),
                                  noise=spec.get("noise", 0.0), cond=cond)


def history(process, params, keys, labels, spec):
  start = jnp.full((labels.shape[0], process.seq_len), process.mask_id, jnp.int32)
  _, tokens = confidence.confidence_history(
      lambda t: process.model.apply(params, t, labels), keys, start,
      reveal_sizes(process, spec), mask_id=process.mask_id, temperature=temperature(spec),
      noise=spec.get("noise", 0.0))
  return hidden_as_nan(tokens, tokens == process.mask_id)


register_sampler("confidence", TokenSampler(
    {"schedule": "cosine", "temperature": 1.0, "noise": 0.0}, steps, sample, history,
    needs_steps=True, greedy=True, requires=("any_subset",)))
