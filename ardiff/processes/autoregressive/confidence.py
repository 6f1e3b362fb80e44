"""Confidence-ordered parallel decoding (MaskGIT, Chang et al. 2022) for bidirectional models.

Where ARDM reveals the positions of a fixed (random or raster) plan, this sampler lets the model
choose: at step s it draws a candidate token at every hidden position from the model's
categoricals, scores each candidate by the model's log-probability of it (its *confidence*;
untempered), and reveals the
n_s hidden positions with the highest scores, keeping the others hidden. Revealed tokens never
change. With ``noise = c > 0`` the scores get Gumbel noise scaled by c * (1 - (s + 1) / S)
(MaskGIT's annealed "choice temperature": random early, greedy at the end).

Step sizes (`reveal_schedule`): ``cosine`` (MaskGIT): after step s a fraction
cos(pi/2 * (s + 1) / S) of the positions is still hidden, so few are revealed first and many
at the end; ``uniform``: as ARDM's k per step. Every step reveals at least one position.

``temperature = 0`` is greedy: each candidate is the argmax token and its confidence the
model's largest probability, so the whole sample is a deterministic function of the labels.

The decoder takes a logits callback (tokens [B, L] -> logits [B, L, V]), so it runs on any
bidirectional predictor with a mask token (ARDM's transformer, masked diffusion's) and is
tested on toy callbacks. Randomness is per example (`ardiff.processes.randomness`).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.processes import categorical, padded, randomness, step_loop

SCHEDULES = ("cosine", "uniform")

LogitsFn = Callable[[jax.Array], jax.Array]  # tokens int32 [B, L] -> logits [B, L, V]


def reveal_schedule(length: int, steps: int, schedule: str = "cosine") -> tuple[int, ...]:
  """Positions revealed at each of `steps` steps: positive ints summing to `length`.

  cosine: hidden after step s = floor(L cos(pi/2 (s+1)/S)), then each step raised to at least
  one position by taking it from the largest later step (so S <= L steps always fit).
  uniform: as evenly as possible, the larger steps last.
  """
  if not isinstance(steps, int) or not 1 <= steps <= length:
    raise ValueError(f"steps must be an integer in 1..{length}, got {steps!r}")
  if schedule == "uniform":
    base, extra = divmod(length, steps)
    return tuple([base] * (steps - extra) + [base + 1] * extra)
  if schedule != "cosine":
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
  hidden = [length] + [math.floor(length * math.cos(math.pi / 2 * (s + 1) / steps))
                       for s in range(steps)]
  hidden[-1] = 0
  sizes = [hidden[s] - hidden[s + 1] for s in range(steps)]
  for s in range(steps):  # every step reveals >= 1: borrow from the largest step after it
    while sizes[s] < 1:
      donor = max(range(s + 1, steps), key=lambda j: sizes[j])
      sizes[donor] -= 1
      sizes[s] += 1
  assert sum(sizes) == length and min(sizes) >= 1, sizes
  return tuple(sizes)


def _candidates(keys, logits, temperature, greedy: bool):
  """Tokens [B, L] drawn at the temperature (greedy: argmax) and their confidences [B, L]: the
  model's own log-probability of each token (untempered, so that the temperature changes which
  tokens are drawn, not how sure the model is of them)."""
  logits = logits.astype(jnp.float32)
  logp = jax.nn.log_softmax(logits, axis=-1)
  if greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.max(logp, axis=-1)
  z = categorical.draw(keys, logits, temperature)
  return z, jnp.take_along_axis(logp, z[..., None], axis=-1)[..., 0]


def step_table(sizes: Sequence[int]) -> tuple[jax.Array, jax.Array]:
  """The positions revealed after each step, cumsum(sizes), padded to its bucket (int32 [P]),
  and the number of steps S (int32): the plan as data, so one program serves every S."""
  return (jnp.asarray(padded.pad_rows(np.cumsum(sizes)), jnp.int32),
          jnp.int32(len(sizes)))


def _reveal_step(logits_fn, keys, tokens, s, revealed_after, num_steps, total, *, mask_id,
                 temperature, greedy, noise, noisy):
  """Step s of S: reveal the most confident hidden positions until revealed_after are."""
  step_keys = randomness.step_keys(keys, s)
  z, confidence = _candidates(step_keys, logits_fn(tokens), temperature, greedy)
  if noisy:
    scale = noise * (1.0 - (s + 1) / num_steps)
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, z.shape[1:]))(
        randomness.step_keys(step_keys, 1))
    confidence = confidence + scale * gumbel
  hidden = tokens == mask_id
  # Reveal the top-n hidden positions, n = those this step must leave revealed in total
  # minus those already revealed by earlier steps; ties go to the lower position.
  n = revealed_after - (total - hidden.sum(axis=1))
  score = jnp.where(hidden, confidence, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-score, axis=1, stable=True), axis=1, stable=True)
  reveal = hidden & (rank < n[:, None])
  return jnp.where(reveal, z, tokens)


def reveal_loop(logits_fn: LogitsFn, keys: jax.Array, tokens: jax.Array, cumulative: jax.Array,
                num_steps: jax.Array, *, mask_id: int, temperature=1.0, greedy: bool = False,
                noise=0.0, noisy: bool = False) -> jax.Array:
  """The decoding loop with the plan as data (`step_table`): a fori_loop over the traced S
  that reads cumulative[0 .. S-1] only. temperature and noise may be traced; greedy and noisy
  (noise > 0) are static, as they change the program."""
  total = cumulative[num_steps - 1]

  def body(s, tokens):
    return _reveal_step(logits_fn, keys, tokens, s, cumulative[s], num_steps, total,
                        mask_id=mask_id, temperature=temperature, greedy=greedy, noise=noise,
                        noisy=noisy)

  return jax.lax.fori_loop(0, num_steps, body, tokens)


def _checked(sizes: Sequence[int], tokens, mask_id: int, temperature, noise):
  """The sizes as ints and the tokens as int32, refusing what cannot be decoded."""
  sizes = tuple(int(s) for s in sizes)
  if not sizes or min(sizes) < 1:
    raise ValueError(f"sizes must be positive ints, got {list(sizes)}")
  if temperature < 0 or noise < 0:
    raise ValueError(f"temperature and noise must be >= 0, got {temperature}, {noise}")
  tokens = jnp.asarray(tokens, jnp.int32)
  if not isinstance(tokens, jax.core.Tracer):
    hidden = np.asarray(tokens == mask_id).sum(axis=1)
    if not (hidden == sum(sizes)).all():
      raise ValueError(f"sizes sum to {sum(sizes)} but the examples hide "
                       f"{sorted(set(hidden.tolist()))} positions")
  return sizes, tokens


def _options(mask_id: int, temperature, noise) -> dict:
  return dict(mask_id=mask_id, temperature=temperature, greedy=temperature == 0,
              noise=noise, noisy=noise > 0)


def confidence_decode(logits_fn: LogitsFn, keys: jax.Array, tokens: jax.Array,
                      sizes: Sequence[int], *, mask_id: int, temperature: float = 1.0,
                      noise: float = 0.0) -> jax.Array:
  """Reveal the hidden positions of `tokens` (those equal to mask_id) in len(sizes) steps.

  Args:
    logits_fn: tokens int32 [B, L] (hidden = mask_id) -> logits [B, L, V].
    keys: per-example keys [B] (`randomness.example_keys`).
    tokens: int32 [B, L]; positions not equal to mask_id are known and never change.
    sizes: positions revealed per step, summing to the number of hidden positions per example
      (every example must hide the same number; checked when concrete).
    temperature: candidate tokens from softmax(logits / temperature); 0: argmax (greedy).
    noise: Gumbel noise on the confidences, scaled by noise * (1 - (s + 1) / S).
  Returns tokens int32 [B, L] (the loop runs S as data, `reveal_loop`).
  """
  sizes, tokens = _checked(sizes, tokens, mask_id, temperature, noise)
  return reveal_loop(logits_fn, keys, tokens, *step_table(sizes),
                     **_options(mask_id, temperature, noise))


def confidence_history(logits_fn: LogitsFn, keys: jax.Array, tokens: jax.Array,
                       sizes: Sequence[int], *, mask_id: int, temperature: float = 1.0,
                       noise: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """`confidence_decode`'s steps with every state kept: (tokens int32 [B, L], the tokens after
  every step int32 [S, B, L]); the same draws as `confidence_decode` (a scan over the S steps,
  `step_loop.trace`)."""
  sizes, tokens = _checked(sizes, tokens, mask_id, temperature, noise)
  num_steps, cumulative = len(sizes), jnp.asarray(np.cumsum(sizes), jnp.int32)
  options = _options(mask_id, temperature, noise)

  def step(s, tokens):
    return _reveal_step(logits_fn, keys, tokens, s, cumulative[s], num_steps, sum(sizes),
                        **options)

  return step_loop.trace(step_loop.StepLoop(step, tokens, num_steps))
