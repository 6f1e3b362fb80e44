"""What the diffusion network is trained to predict, and how each prediction maps back.

Every target is a reparametrisation of the same thing, so samplers only see (x0_hat, eps_hat):
  eps:       the noise that was added;
  x0:        the clean data;
  v:         sqrt(ab) eps - sqrt(1-ab) x0 (Salimans & Ho, 2022);
  next_step: the naive one-step target x_{t-1}, drawn from the forward chain given x_t's
             ancestor; its regression optimum is E[x_{t-1} | x_t], the posterior mean
             mu(x_t, x0) = c0 x0 + ct x_t, from which x0_hat is recovered.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ardiff.processes.gaussian.schedules import Schedule

TARGETS = ("eps", "x0", "v", "next_step")


def bcast(a: jax.Array, x: jax.Array) -> jax.Array:
  """a [B] (per example) reshaped to broadcast against x [B, ...]."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def posterior_from_alpha_bars(ab_t: jax.Array, ab_s: jax.Array):
  """(c0, ct, var) of q(x_s | x_t, x_0) = N(c0 x0 + ct x_t, var) from alpha_bar at t and s."""
  a_ts = ab_t / ab_s
  c0 = jnp.sqrt(ab_s) * (1.0 - a_ts) / (1.0 - ab_t)
  ct = jnp.sqrt(a_ts) * (1.0 - ab_s) / (1.0 - ab_t)
  var = (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - a_ts)
  return c0, ct, var


def noisy_sample_and_target(
    target: str, schedule: Schedule, x0: jax.Array, t: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Draw x_t ~ q(x_t | x0) for integer t in 1..T and return (x_t, regression target)."""
  ab = bcast(schedule.alpha_bars[t], x0)
  if target == "next_step":
    # Walk the forward chain: x_{t-1} ~ q(. | x0), then one step x_t ~ q(x_t | x_{t-1}).
    k1, k2 = jax.random.split(key)
    ab_prev = bcast(schedule.alpha_bars[t - 1], x0)
    beta = bcast(schedule.betas[t], x0)
    x_prev = jnp.sqrt(ab_prev) * x0 + jnp.sqrt(1 - ab_prev) * jax.random.normal(k1, x0.shape)
    x_t = jnp.sqrt(1 - beta) * x_prev + jnp.sqrt(beta) * jax.random.normal(k2, x0.shape)
    return x_t, x_prev
  eps = jax.random.normal(key, x0.shape)
  x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
  if target == "eps":
    return x_t, eps
  if target == "x0":
    return x_t, x0
  if target == "v":
    return x_t, jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0
  raise ValueError(f"unknown diffusion target {target!r}; known: {', '.join(TARGETS)}")


def prediction_to_eps(
    target: str, schedule: "Schedule | jax.Array", prediction: jax.Array, x_t: jax.Array,
    t: jax.Array) -> jax.Array:
  """Convert a network output in `target` space to the implied noise prediction eps_hat.

  Either (schedule, integer t [B]) or, at real times, (alpha_bar [B], alpha_bar one training
  step earlier [B]) (the latter only matters to the next_step target).
  """
  if isinstance(schedule, Schedule):
    ab_t, ab_prev = schedule.alpha_bars[t], schedule.alpha_bars[jnp.maximum(t - 1, 0)]
  else:
    ab_t, ab_prev = schedule, t
  ab = bcast(ab_t, x_t)
  if target == "eps":
    return prediction
  if target == "x0":
    x0 = prediction
  elif target == "v":
    x0 = jnp.sqrt(ab) * x_t - jnp.sqrt(1 - ab) * prediction
  elif target == "next_step":
    c0, ct, _ = posterior_from_alpha_bars(ab_t, ab_prev)
    x0 = (prediction - bcast(ct, x_t) * x_t) / bcast(c0, x_t)
  else:
    raise ValueError(f"unknown diffusion target {target!r}; known: {', '.join(TARGETS)}")
  return (x_t - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)


def eps_to_x0(schedule: Schedule, eps: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
  ab = bcast(schedule.alpha_bars[t], x_t)
  return (x_t - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab)
