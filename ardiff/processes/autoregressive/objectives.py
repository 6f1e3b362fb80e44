"""Likelihood objectives for raster and order-agnostic autoregression, in nats.

Conventions: every NLL here is in **nats per example** (summed over the L positions) unless the
name says otherwise. Bits per dimension are ``bpd = NLL / (L * ln 2)`` (:func:`nats_to_bpd`).

A ``logits_fn(tokens [B, L] int, y [B] int) -> logits [B, L, V]`` is the model with its
parameters closed over. For the causal model it reads the (shifted) sequence; for the
bidirectional model hidden positions hold ``mask_id`` (= V).

Order-agnostic ARDM (Hoogeboom et al. 2021): for t ~ U{0..L-1} and a uniformly random order
sigma, reveal sigma(1..t) and score the L-t hidden positions:

  estimate = L / (L - t) * sum_{i hidden} -log p(x_i | x_revealed, y).

Its expectation over (t, sigma) equals E_sigma[-log p_sigma(x)], the average over orders of the
exact per-order chain-rule NLL, which upper-bounds -log p(x) of the order mixture.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from ardiff.processes.autoregressive.orders import random_orders
from ardiff.processes.categorical import token_nll

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


def raster_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """Exact NLL of causal logits [B, L, V] for tokens x [B, L]: [B] nats (sum over positions).

  In bits per dimension: ``nats_to_bpd(raster_nll(...), L)`` = NLL / (L ln 2).
  """
  return token_nll(logits, x).sum(axis=-1)


def nats_to_bpd(nll_nats: jax.Array, num_tokens: int) -> jax.Array:
  """Bits per dimension from a per-example NLL in nats: nll / (num_tokens * ln 2)."""
  return nll_nats / (num_tokens * math.log(2.0))


def sample_revealed(key: jax.Array, batch: int, length: int) -> jax.Array:
  """ARDM reveal mask bool [batch, length]: t ~ U{0..L-1}, then the first t of a random order."""
  k_t, k_order = jax.random.split(key)
  t = jax.random.randint(k_t, (batch, 1), 0, length)
  ranks = jnp.argsort(random_orders(k_order, batch, length), axis=-1)  # rank of each position
  return ranks < t


def ardm_loss_given(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, revealed: jax.Array, mask_id: int
) -> jax.Array:
  """ARDM estimate for a given reveal mask: L / (L - t) * sum over hidden of -log p. [B] nats.

  Args:
    logits_fn: bidirectional model (tokens, y) -> logits [B, L, V].
    x: int [B, L] data; y: int [B] labels.
    revealed: bool [B, L] with t = revealed.sum(-1) < L per row.
    mask_id: the token id of a hidden position.
  """
  length = x.shape[-1]
  inputs = jnp.where(revealed, x, mask_id)
  nll = token_nll(logits_fn(inputs, y), x)
  hidden = ~revealed
  n_hidden = hidden.sum(axis=-1)
  return length / n_hidden * jnp.where(hidden, nll, 0.0).sum(axis=-1)


def ardm_loss(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, mask_id: int
) -> jax.Array:
  """One-sample ARDM estimate of the order-agnostic NLL bound per example: [B] nats."""
  revealed = sample_revealed(key, x.shape[0], x.shape[-1])
  return ardm_loss_given(logits_fn, x, y, revealed, mask_id)


def order_nll(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, order: jax.Array, mask_id: int
) -> jax.Array:
  """Exact chain-rule NLL along a given order, summing over all t (L model calls): [B] nats.

  -log p_sigma(x) = sum_t -log p(x_{sigma(t)} | x_{sigma(<t)}, y). With one random order per
  example this is an unbiased, lower-variance estimate of the ARDM bound.

  Args:
    order: int [L] (shared) or [B, L] (per example), a permutation of the positions.
  """
  b, length = x.shape
  order = jnp.broadcast_to(jnp.asarray(order, jnp.int32), (b, length))
  ranks = jnp.argsort(order, axis=-1)
  rows = jnp.arange(b)

  def body(total, t):
    inputs = jnp.where(ranks < t, x, mask_id)
    nll = token_nll(logits_fn(inputs, y), x)
    return total + nll[rows, order[:, t]], None

  total, _ = jax.lax.scan(body, jnp.zeros(b), jnp.arange(length))
  return total


def per_step_losses(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, mask_id: int,
    batch_size: int | None = None,
) -> jax.Array:
  """L_t for t = 0..L-1: mean -log p of one hidden position given t revealed. float32 [L].

  For each t a fresh random order per example reveals t positions; the loss is averaged over
  the L - t hidden positions and the batch. sum_t L_t estimates the ARDM bound in nats; these
  are the per-step costs for :func:`ardiff.processes.autoregressive.budget.optimal_budget`.
  batch_size: run the network on at most this many examples at a time (the orders are drawn
  for the whole set first, so the result does not depend on it); None runs them all at once.
  """
  b, length = x.shape

  def one(args):  # one example; lax.map vmaps it over batch_size examples at a time
    xi, yi, revealed_i = args
    return ardm_loss_given(logits_fn, xi[None], yi[None], revealed_i[None], mask_id)[0]

  def body(_, t):
    ranks = jnp.argsort(random_orders(jax.random.fold_in(key, t), b, length), axis=-1)
    revealed = ranks < t
    if batch_size is None or batch_size >= b:
      per_example = ardm_loss_given(logits_fn, x, y, revealed, mask_id)
    else:
      per_example = jax.lax.map(one, (x, y, revealed), batch_size=batch_size)
    return None, (per_example / length).mean()

  _, losses = jax.lax.scan(body, None, jnp.arange(length))
  return losses
