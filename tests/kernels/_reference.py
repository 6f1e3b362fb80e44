"""float64 softmax attention and its gradient in numpy: the reference every kernel is checked
against (independent of jax)."""

from __future__ import annotations

import numpy as np


def attention64(q, k, v, allowed):
  """q [B, T, N, H], k, v [B, S, N, H], allowed bool [T, S] (or [B, T, S]) -> out [B, T, N, H]
  and the probabilities [B, N, T, S]."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  allowed = np.asarray(allowed, bool)
  allowed = allowed[:, None] if allowed.ndim == 3 else allowed
  scores = np.where(allowed, scores, -np.inf)
  p = np.exp(scores - scores.max(axis=-1, keepdims=True))
  p /= p.sum(axis=-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", p, v), p


def attention64_grad(q, k, v, allowed, cotangent):
  """d/d(q, k, v) of sum(attention64(q, k, v) * cotangent), by the chain rule through softmax:
  dV = P^T G, dP = G V^T, dS = P (dP - sum_s P dP), dQ = dS K / sqrt(H), dK = dS^T Q / sqrt(H)."""
  q, k, v, g = (np.asarray(a, np.float64) for a in (q, k, v, cotangent))
  _, p = attention64(q, k, v, allowed)
  scale = 1 / np.sqrt(q.shape[-1])
  dv = np.einsum("bnts,btnh->bsnh", p, g)
  dp = np.einsum("btnh,bsnh->bnts", g, v)
  ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
  dq = np.einsum("bnts,bsnh->btnh", ds, k) * scale
  dk = np.einsum("bnts,btnh->bsnh", ds, q) * scale
  return dq, dk, dv
