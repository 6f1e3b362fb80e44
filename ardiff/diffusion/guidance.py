"""Classifier-free guidance (Ho & Salimans, 2022), with optional negative conditioning.

eps = eps(x, neg) + w * (eps(x, y) - eps(x, neg)), where `neg` is the null label (plain
guidance) or a class to steer away from. w = 0 is the unconditional (or negative-conditioned)
model, w = 1 the conditional model, w > 1 extrapolates past it.
The guided function takes cond = {"y": labels, "neg": labels, "w": scale} and evaluates both
streams in one batched call.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp


@functools.lru_cache(maxsize=None)  # same eps_fn -> same guided fn, so jit caches hit
def guided(eps_fn):
  def guided_eps(params, x, t, cond):
    b = x.shape[0]
    both = eps_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                  jnp.concatenate([cond["y"], cond["neg"]]))
    eps_cond, eps_neg = both[:b], both[b:]
    w = jnp.asarray(cond["w"], x.dtype)
    return eps_neg + w * (eps_cond - eps_neg)

  return guided_eps


def guidance_cond(labels, scale: float, null_label: int, negative=None):
  """Build the cond dict for `guided`: steer toward `labels`, away from `negative` (or null)."""
  labels = jnp.asarray(labels, jnp.int32)
  neg = jnp.full_like(labels, null_label) if negative is None else jnp.broadcast_to(
      jnp.asarray(negative, jnp.int32), labels.shape)
  return {"y": labels, "neg": neg, "w": jnp.float32(scale)}
