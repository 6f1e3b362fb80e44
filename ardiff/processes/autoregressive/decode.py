"""Samplers for the causal (raster) and bidirectional (order-agnostic) transformers.

Every entry point is one jitted function whose loop is a ``jax.lax.scan`` (raster) or a
``jax.lax.fori_loop`` with a traced step count (parallel decoding: one program for every plan
of the same batch shape, whatever its number of steps).

Classifier-free guidance: ``cond`` (`guidance.guidance_cond`: labels ``y``, the negative
labels ``neg`` and the weight ``w``, all traced) runs two streams in one batched model call,
the conditional one (labels ``y``) and the unconditional one (``neg``: the null label
``num_classes``, or a class to steer away from), and

  logits_guided = logits_uncond + w * (logits_cond - logits_uncond),

the rule of `ardiff.processes.guidance`, shared with diffusion: ``w = 0`` is the
unconditional (or negative-conditioned) model, ``w = 1`` plain conditional sampling, and
``w > 1`` sharpens toward the class.
``cond=None`` runs the conditional stream only. Tokens are drawn from
``softmax(logits_guided / temperature)``.

Randomness is per example (`ardiff.processes.randomness`): example b draws position (or step) i
with fold_in(keys[b], i), keys[b] = split(key, B)[b] unless per-example keys are given. So the
KV-cache and no-cache raster samplers produce the same tokens under the same key, and a sample
does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.kernels.decode_attention import SEGMENT, prefix_segments
from ardiff.models.transformer import Transformer, init_cache
from ardiff.processes import categorical, randomness
from ardiff.processes import guidance as guide
from ardiff.processes.autoregressive import confidence


def model_call(model, params, tokens, cond, y, *args, **kwargs):
  """One model call, doubled into [conditional; negative] streams and combined when guiding."""
  if cond is None:
    return model.apply(params, tokens, *args, y, **kwargs)
  out = model.apply(params, guide.stream_inputs(tokens), *args, guide.stream_labels(cond),
                    **kwargs)
  if isinstance(out, tuple):  # decode_step: (logits, cache)
    return guide.combine(out[0], cond["w"]), out[1]
  return guide.combine(out, cond["w"])


def _check_common(model: Transformer, causal: bool, y, temperature) -> None:
  if model.causal != causal:
    raise ValueError(f"model: this sampler needs causal={causal}, got causal={model.causal}")
  if np.ndim(y) != 1:
    raise ValueError(f"y must be int [B], got shape {np.shape(y)}")
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_num_steps(model: Transformer, num_steps: int | None) -> int:
  if num_steps is None:
    return model.seq_len
  if not 1 <= num_steps <= model.seq_len:
    raise ValueError(f"num_steps must lie in 1..{model.seq_len}, got {num_steps}")
  return int(num_steps)


def _grown(cache, slots: int):
  """The cache with zero slots appended up to ``slots`` (one copy, between two segments)."""
  return jax.tree.map(lambda a: jnp.pad(a, ((0, 0), (0, 0), (0, slots - a.shape[2]), (0, 0))),
                      cache)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "use_cache", "segment"))
def _raster(model, params, key, y, temperature, cond, num_steps, use_cache, segment):
  b = y.shape[0]
  keys = randomness.example_keys(key, b)

  def step(carry, pos):
    tokens, cache = carry
    if use_cache:
      prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
      logits, cache = model_call(model, params, prev, cond, y, pos, cache,
                                 method=Transformer.decode_step)
    else:
      logits = model_call(model, params, tokens, cond, y)
      logits = jax.lax.dynamic_index_in_dim(logits, pos, axis=1, keepdims=False)
    z = categorical.draw(randomness.step_keys(keys, pos), logits, temperature)
    return (tokens.at[:, pos].set(z), cache), None

  tokens = jnp.zeros((b, model.seq_len), jnp.int32)
  if not use_cache:
    return jax.lax.scan(step, (tokens, None), jnp.arange(num_steps))[0][0]
  # One scan per segment, each on a cache sized to the slots its steps fill (grown between
  # segments), so XLA's attention over every slot does about half the work of one full-cache
  # scan at large L (`prefix_segments`; measured 0.59x the time at L = 784 on CPU, one more
  # second of compilation). The Pallas kernels read only the filled prefix anyway: one scan.
  if model.decode_attention != "xla":
    segment = None
  streams = b if cond is None else 2 * b
  cache = None
  for start, stop, slots in prefix_segments(num_steps, model.seq_len, segment):
    cache = init_cache(model, streams, slots=slots) if cache is None else _grown(cache, slots)
    (tokens, cache), _ = jax.lax.scan(step, (tokens, cache), jnp.arange(start, stop))
  return tokens


def raster_sample(
    model: Transformer, params, key: jax.Array, y: jax.Array, *, temperature: float = 1.0,
    cond: dict | None = None, num_steps: int | None = None, use_cache: bool = True,
    segment: int | None = SEGMENT,
) -> jax.Array:
  """Raster sampling, one position per step: int32 tokens [B, L].

  Args:
    model: a causal Transformer; params: its variables.
    key: PRNG key; y: int [B] labels (num_classes = unconditional).
    temperature: > 0.
    cond: classifier-free guidance, `guidance.guidance_cond` (None = the conditional stream
      only); see the module docstring.
    num_steps: generate only positions 0..num_steps-1 (default all L); later positions stay 0.
    use_cache: decode with the KV cache (default); False reruns the full causal forward every
      step (the reference), drawing the same random numbers and hence the same tokens.
    segment: with the cache and ``decode_attention="xla"``, positions per scan segment, each
      segment on a cache of the slots filled by its end (`decode_attention.prefix_segments`;
      a positive multiple of 16); None: one scan over the full cache. The same attention
      either way (the slots past the filled prefix are masked).
  """
  _check_common(model, True, y, temperature)
  return _raster(model, params, key, jnp.asarray(y, jnp.int32), temperature, cond,
                 _check_num_steps(model, num_steps), bool(use_cache), segment)


@functools.partial(jax.jit, static_argnames=("model",))
def _parallel(model, params, key, y, reveal_step, num_steps, temperature, cond, known_mask,
              known_tokens):
  """Steps s = 0 .. num_steps - 1 reveal the positions with reveal_step == s. The step count
  is a traced int32 and the plan is [B, L] whatever S, so every S shares this program."""
  keys = randomness.example_keys(key, y.shape[0])
  tokens = jnp.where(known_mask, known_tokens, model.mask_id).astype(jnp.int32)

  def step(s, tokens):
    z = categorical.draw(randomness.step_keys(keys, s), model_call(model, params, tokens, cond, y),
                         temperature)
    return jnp.where((reveal_step == s) & ~known_mask, z, tokens)

  return jax.lax.fori_loop(0, num_steps, step, tokens)


def plan_steps(plan: jax.Array) -> jax.Array:
  """A bool plan [..., S, L] as the step that reveals each position, int32 [..., L] (-1:
  never); on the host when the plan is concrete (no program per S)."""
  if isinstance(plan, jax.core.Tracer):
    return jnp.where(plan.any(axis=-2), jnp.argmax(plan, axis=-2), -1).astype(jnp.int32)
  plan = np.asarray(plan, bool)
  return jnp.asarray(np.where(plan.any(axis=-2), plan.argmax(axis=-2), -1), jnp.int32)


def order_agnostic_sample(
    model: Transformer, params, key: jax.Array, y: jax.Array, plan: jax.Array, *,
    temperature: float = 1.0, cond: dict | None = None, known_mask: jax.Array | None = None,
    known_tokens: jax.Array | None = None,
) -> jax.Array:
  """Parallel decoding with the bidirectional model following a step plan: int32 tokens [B, L].

  Each step runs the model once on the partially revealed tokens (hidden = mask id) and draws
  the positions that the step reveals independently from their predicted categoricals.

  Args:
    model: a bidirectional Transformer; params: its variables.
    key: PRNG key; y: int [B] labels.
    plan: bool [S, L] or [B, S, L] (see :mod:`ardiff.processes.autoregressive.orders`). Together with
      known_mask every position must be revealed exactly once (checked when concrete).
    temperature, cond: as in :func:`raster_sample`.
    known_mask: optional bool [B, L] or [L], True where known_tokens are given (inpainting);
      those positions start revealed and are never changed.
    known_tokens: int [B, L] or [L], read where known_mask is True.
  """
  _check_common(model, False, y, temperature)
  b, length = np.shape(y)[0], model.seq_len
  if not isinstance(plan, jax.core.Tracer):
    plan = np.asarray(plan, bool)  # host-side checks and conversion: no program per S
  if np.ndim(plan) == 2:
    plan = plan[None]
  if np.ndim(plan) != 3 or np.shape(plan)[0] not in (1, b) or np.shape(plan)[2] != length:
    raise ValueError(f"plan must be bool [S, {length}] or [{b}, S, {length}], got "
                     f"{np.shape(plan)}")
  if (known_mask is None) != (known_tokens is None):
    raise ValueError("known_mask and known_tokens must be given together")
  if known_mask is None:
    known_mask = jnp.zeros((b, length), bool)
    known_tokens = jnp.zeros((b, length), jnp.int32)
  known_mask = jnp.broadcast_to(jnp.asarray(known_mask, bool), (b, length))
  known_tokens = jnp.broadcast_to(jnp.asarray(known_tokens, jnp.int32), (b, length))
  if not isinstance(plan, jax.core.Tracer) and not isinstance(known_mask, jax.core.Tracer):
    count = np.asarray(plan).sum(axis=1) + np.asarray(known_mask)
    if not (count == 1).all():
      raise ValueError("plan: with known_mask, every position must be revealed exactly once; "
                       f"found reveal counts {sorted(set(count.ravel().tolist()))}")
  reveal_step = jnp.broadcast_to(plan_steps(plan), (b, length))
  return _parallel(model, params, key, jnp.asarray(y, jnp.int32), reveal_step,
                   jnp.int32(np.shape(plan)[1]), temperature, cond, known_mask, known_tokens)


def reveal_step_sample(model: Transformer, params, key: jax.Array, y: jax.Array,
                       reveal_step: jax.Array, num_steps: int, *, temperature: float = 1.0,
                       cond: dict | None = None):
  """`order_agnostic_sample` with the plan given as the step of each position, int [B, L] or
  [L] (`orders.reveal_steps`: every position in 0..num_steps-1), and no known positions: the
  form whose shapes do not depend on the number of steps (one program for every S)."""
  _check_common(model, False, y, temperature)
  b, length = np.shape(y)[0], model.seq_len
  reveal_step = jnp.broadcast_to(jnp.asarray(reveal_step, jnp.int32), (b, length))
  if not isinstance(reveal_step, jax.core.Tracer) and jnp.ndim(key) == 1:
    # laid out like the per-example keys (a random plan drawn from them already is): a plan
    # that is not (a raster one) would otherwise compile a second program
    reveal_step = jax.device_put(reveal_step, key.sharding)
  return _parallel(model, params, key, jnp.asarray(y, jnp.int32), reveal_step,
                   jnp.int32(num_steps), temperature, cond, jnp.zeros((b, length), bool),
                   jnp.zeros((b, length), jnp.int32))


@functools.partial(jax.jit, static_argnames=("model", "greedy", "noisy"))
def _confidence(model, params, keys, y, cumulative, num_steps, temperature, noise, cond, *,
                greedy, noisy):
  tokens = jnp.full((y.shape[0], model.seq_len), model.mask_id, jnp.int32)
  return confidence.reveal_loop(lambda t: model_call(model, params, t, cond, y), keys, tokens,
                                cumulative, num_steps, mask_id=model.mask_id,
                                temperature=temperature, greedy=greedy, noise=noise,
                                noisy=noisy)


def confidence_sample(model: Transformer, params, keys: jax.Array, y: jax.Array, sizes, *,
                      temperature: float = 1.0, noise: float = 0.0, cond: dict | None = None):
  """Confidence decoding (`confidence.confidence_decode`) of every position from per-example
  keys [B], compiled once for every step count, temperature > 0 and noise > 0 (the sizes are
  padded data; greedy decoding and noise off are their own programs)."""
  _check_common(model, False, y, temperature if temperature > 0 else 1.0)
  if noise < 0:
    raise ValueError(f"noise must be >= 0, got {noise}")
  cumulative, num_steps = confidence.step_table(sizes)
  return _confidence(model, params, keys, jnp.asarray(y, jnp.int32), cumulative, num_steps,
                     jnp.float32(temperature), jnp.float32(noise), cond, greedy=temperature == 0,
                     noisy=noise > 0)
