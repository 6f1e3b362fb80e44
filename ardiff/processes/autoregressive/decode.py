"""Samplers for the causal (raster) and bidirectional (order-agnostic) transformers.

Every entry point is one jitted function whose loop is a ``jax.lax.scan``.

Classifier-free guidance: with weight ``w`` two streams run in one batched model call, the
conditional one (labels ``y``) and the unconditional one (the null label ``num_classes``, or
``neg_y`` when a negative label is given), and

  logits_guided = logits_uncond + w * (logits_cond - logits_uncond),

the rule of `ardiff.processes.guidance`, shared with diffusion: ``w = 0`` is the
unconditional (or negative-conditioned) model, ``w = 1`` plain conditional sampling, and
``w > 1`` sharpens toward the class.
``guidance=None`` runs the conditional stream only. Tokens are drawn from
``softmax(logits_guided / temperature)``.

Randomness is per example (`ardiff.processes.discrete`): example b draws position (or step) i
with fold_in(keys[b], i), keys[b] = split(key, B)[b] unless per-example keys are given. So the
KV-cache and no-cache raster samplers produce the same tokens under the same key, and a sample
does not depend on how the batch is split over devices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.models.transformer import Transformer, init_cache
from ardiff.processes import discrete
from ardiff.processes import guidance as guide


def guidance_streams(model: Transformer, y: jax.Array, guidance, neg_y) -> dict | None:
  """The guidance streams' labels and weight (None: the conditional stream alone)."""
  if guidance is None:
    return None
  neg = jnp.full_like(y, model.num_classes) if neg_y is None else jnp.asarray(neg_y, jnp.int32)
  return {"y": y, "neg": neg, "w": guidance}


def model_call(model, params, tokens, cond, y, *args, **kwargs):
  """One model call, doubled into [conditional; negative] streams and combined when guiding."""
  if cond is None:
    return model.apply(params, tokens, *args, y, **kwargs)
  out = model.apply(params, guide.stream_inputs(tokens), *args, guide.stream_labels(cond),
                    **kwargs)
  if isinstance(out, tuple):  # decode_step: (logits, cache)
    return guide.combine(out[0], cond["w"]), out[1]
  return guide.combine(out, cond["w"])


def _check_common(model: Transformer, causal: bool, y, temperature, guidance, neg_y) -> None:
  if model.causal != causal:
    raise ValueError(f"model: this sampler needs causal={causal}, got causal={model.causal}")
  if np.ndim(y) != 1:
    raise ValueError(f"y must be int [B], got shape {np.shape(y)}")
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  if neg_y is not None and guidance is None:
    raise ValueError("neg_y needs guidance (a weight w), got guidance=None")
  if neg_y is not None and np.shape(neg_y) != np.shape(y):
    raise ValueError(f"neg_y must have y's shape {np.shape(y)}, got {np.shape(neg_y)}")


def _check_num_steps(model: Transformer, num_steps: int | None) -> int:
  if num_steps is None:
    return model.seq_len
  if not 1 <= num_steps <= model.seq_len:
    raise ValueError(f"num_steps must lie in 1..{model.seq_len}, got {num_steps}")
  return int(num_steps)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "use_cache"))
def _raster(model, params, key, y, temperature, guidance, neg_y, num_steps, use_cache):
  cond = guidance_streams(model, y, guidance, neg_y)
  b = y.shape[0]
  keys = discrete.example_keys(key, b)

  def step(carry, pos):
    tokens, cache = carry
    if use_cache:
      prev = jax.lax.dynamic_index_in_dim(tokens, jnp.maximum(pos - 1, 0), axis=1, keepdims=False)
      logits, cache = model_call(model, params, prev, cond, y, pos, cache,
                                 method=Transformer.decode_step)
    else:
      logits = model_call(model, params, tokens, cond, y)
      logits = jax.lax.dynamic_index_in_dim(logits, pos, axis=1, keepdims=False)
    z = discrete.draw(discrete.step_keys(keys, pos), logits, temperature)
    return (tokens.at[:, pos].set(z), cache), None

  streams = b if cond is None else 2 * b
  cache = init_cache(model, streams) if use_cache else None
  carry = (jnp.zeros((b, model.seq_len), jnp.int32), cache)
  (tokens, _), _ = jax.lax.scan(step, carry, jnp.arange(num_steps))
  return tokens


def raster_sample(
    model: Transformer, params, key: jax.Array, y: jax.Array, *, temperature: float = 1.0,
    guidance: float | None = None, neg_y: jax.Array | None = None, num_steps: int | None = None,
    use_cache: bool = True,
) -> jax.Array:
  """Raster sampling, one position per step: int32 tokens [B, L].

  Args:
    model: a causal Transformer; params: its variables.
    key: PRNG key; y: int [B] labels (num_classes = unconditional).
    temperature: > 0.
    guidance: CFG weight w (None = conditional stream only); see the module docstring.
    neg_y: optional int [B] negative labels for the unconditional stream (needs guidance).
    num_steps: generate only positions 0..num_steps-1 (default all L); later positions stay 0.
    use_cache: decode with the KV cache (default); False reruns the full causal forward every
      step (the reference), drawing the same random numbers and hence the same tokens.
  """
  _check_common(model, True, y, temperature, guidance, neg_y)
  return _raster(model, params, key, jnp.asarray(y, jnp.int32), temperature, guidance, neg_y,
                 _check_num_steps(model, num_steps), bool(use_cache))


def raster_sample_nocache(model: Transformer, params, key: jax.Array, y: jax.Array,
                          **kwargs) -> jax.Array:
  """Reference raster sampler without a cache: ``raster_sample(..., use_cache=False)``."""
  return raster_sample(model, params, key, y, use_cache=False, **kwargs)


def raster_history(tokens: jax.Array, mask_id: int) -> jax.Array:
  """A raster sample [B, L] after each of its L steps: [L, B, L], step s revealed 0..s."""
  step = jnp.arange(tokens.shape[1])
  return jnp.where(step[None, None, :] <= step[:, None, None], tokens[None], mask_id)


@functools.partial(jax.jit, static_argnames=("model",))
def _parallel(model, params, key, y, plan, temperature, guidance, neg_y, known_mask, known_tokens):
  cond = guidance_streams(model, y, guidance, neg_y)
  keys = discrete.example_keys(key, y.shape[0])
  tokens = jnp.where(known_mask, known_tokens, model.mask_id).astype(jnp.int32)
  steps = jnp.swapaxes(plan, 0, 1)  # [S, B, L]

  def step(tokens, xs):
    reveal, s = xs
    z = discrete.draw(discrete.step_keys(keys, s), model_call(model, params, tokens, cond, y),
                      temperature)
    return jnp.where(reveal & ~known_mask, z, tokens), None

  tokens, _ = jax.lax.scan(step, tokens, (steps, jnp.arange(steps.shape[0])))
  return tokens


def order_agnostic_sample(
    model: Transformer, params, key: jax.Array, y: jax.Array, plan: jax.Array, *,
    temperature: float = 1.0, guidance: float | None = None, neg_y: jax.Array | None = None,
    known_mask: jax.Array | None = None, known_tokens: jax.Array | None = None,
) -> jax.Array:
  """Parallel decoding with the bidirectional model following a step plan: int32 tokens [B, L].

  Each step runs the model once on the partially revealed tokens (hidden = mask id) and draws
  the positions that the step reveals independently from their predicted categoricals.

  Args:
    model: a bidirectional Transformer; params: its variables.
    key: PRNG key; y: int [B] labels.
    plan: bool [S, L] or [B, S, L] (see :mod:`ardiff.processes.autoregressive.orders`). Together with
      known_mask every position must be revealed exactly once (checked when concrete).
    temperature, guidance, neg_y: as in :func:`raster_sample`.
    known_mask: optional bool [B, L] or [L], True where known_tokens are given (inpainting);
      those positions start revealed and are never changed.
    known_tokens: int [B, L] or [L], read where known_mask is True.
  """
  _check_common(model, False, y, temperature, guidance, neg_y)
  b, length = np.shape(y)[0], model.seq_len
  plan = jnp.asarray(plan, bool)
  if plan.ndim == 2:
    plan = jnp.broadcast_to(plan[None], (b,) + plan.shape)
  if plan.ndim != 3 or plan.shape[0] != b or plan.shape[2] != length:
    raise ValueError(f"plan must be bool [S, {length}] or [{b}, S, {length}], got {plan.shape}")
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
  return _parallel(model, params, key, jnp.asarray(y, jnp.int32), plan, temperature, guidance,
                   neg_y, known_mask, known_tokens)
