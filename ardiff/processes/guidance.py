"""Classifier-free guidance (Ho & Salimans, 2022) with optional negative conditioning, for every
process: the same rule for a diffusion model's eps and an autoregressive model's logits.

    out = out(x, neg) + w * (out(x, y) - out(x, neg))

`neg` is the null label (plain guidance) or a class to steer away from (negative
conditioning). w = 0 is the unconditional (or negative-conditioned) model, w = 1 the
conditional model, w > 1 extrapolates past it. Both streams run in one batched model call
(the batch doubled as [conditional; negative]).

One behaviour everywhere: guidance=None runs the conditional model alone; a negative label
needs a weight (a negative label with w = 1 would be ignored, so it is an error rather than a
silent no-op).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Guidance:
  """Guidance weight `scale` (w) and an optional `negative` label (int, or None: null label)."""

  scale: float
  negative: int | None = None

  def __post_init__(self):
    if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool):
      raise ValueError(f"guidance scale must be a number, got {self.scale!r}")
    if self.negative is not None and (not isinstance(self.negative, int) or self.negative < 0):
      raise ValueError(f"negative label must be a class id >= 0, got {self.negative!r}")


def make_guidance(scale: float | None = None, negative: int | None = None) -> Guidance | None:
  """The Guidance for (w, negative label); None when neither is given."""
  if scale is None and negative is not None:
    raise ValueError(f"negative label {negative} needs a guidance scale w (e.g. w=3): "
                     "with w = 1 the negative stream would cancel out")
  return None if scale is None else Guidance(float(scale), negative)


def check_labels(labels, num_classes: int, guidance: Guidance | None) -> jax.Array:
  """int32 labels [B] in 0..num_classes (num_classes = the null label); checks the negative."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be int [B], got {labels.dtype} {labels.shape}")
  if not isinstance(labels, jax.core.Tracer) and labels.size and (
      int(labels.min()) < 0 or int(labels.max()) > num_classes):
    raise ValueError(f"labels must lie in 0..{num_classes} ({num_classes} = unconditional), "
                     f"got {int(labels.min())}..{int(labels.max())}")
  if guidance is not None and guidance.negative is not None and guidance.negative >= num_classes:
    raise ValueError(f"negative label {guidance.negative} must be a class id in "
                     f"0..{num_classes - 1}")
  return labels.astype(jnp.int32)


def guidance_cond(labels: jax.Array, guidance: Guidance, null_label: int) -> dict:
  """The traced side of guidance, {"y": labels, "neg": labels, "w": scale}, so that a sweep
  over w (or over negative labels) reuses one compiled program."""
  labels = jnp.asarray(labels, jnp.int32)
  neg = null_label if guidance.negative is None else guidance.negative
  return {"y": labels, "neg": jnp.full_like(labels, neg), "w": jnp.float32(guidance.scale)}


def stream_labels(cond: dict) -> jax.Array:
  """Labels of the doubled model call: [y; neg]."""
  return jnp.concatenate([cond["y"], cond["neg"]])


def stream_inputs(x: jax.Array) -> jax.Array:
  """Model inputs of the doubled call: [x; x]."""
  return jnp.concatenate([x, x])


def combine(out: jax.Array, w: jax.Array) -> jax.Array:
  """[2B, ...] outputs of both streams (conditional first) -> neg + w (cond - neg)."""
  cond, neg = jnp.split(out, 2)
  return neg + jnp.asarray(w, out.dtype) * (cond - neg)


@functools.lru_cache(maxsize=None)  # same fn -> same guided fn, so jit caches hit
def guided(fn):
  """fn(params, x, t, labels) -> fn(params, x, t, cond) with cond from `guidance_cond`; eps
  and logits alike (t may be anything with a leading batch axis)."""

  def guided_fn(params, x, t, cond):
    both = fn(params, stream_inputs(x), stream_inputs(t), stream_labels(cond))
    return combine(both, cond["w"])

  return guided_fn
