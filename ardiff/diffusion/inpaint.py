"""Completion (inpainting) with any registered diffusion sampler, by replacement.

At every step the sampler moves the whole image from t to s; then the known pixels are
replaced by a fresh draw from q(x_s | x_known), so the unknown pixels are always denoised next
to a consistently noised copy of the known ones (Song et al. 2021, "replacement"). At s = 0
the known pixels equal x_known exactly, and the returned image keeps them bit for bit.
The replacement method is approximate: the unknown pixels see known pixels drawn
independently of their own noise history, which biases the conditional somewhat (measured in
tests/test_inpaint.py on a correlated Gaussian).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ardiff.diffusion.samplers import SAMPLERS, sampler_args
from ardiff.diffusion.schedules import strided_timesteps


@functools.partial(jax.jit, static_argnames=("eps_fn", "sampler", "num_steps"))
def _inpaint(eps_fn, params, schedule, x_known, mask, key, cond, args, *, sampler, num_steps):
  step = SAMPLERS.get(sampler).step
  ts = jnp.asarray(strided_timesteps(schedule.num_timesteps, num_steps))
  batch = x_known.shape[0]
  k_init, k_loop = jax.random.split(key)

  def noised_known(s, k):
    ab = schedule.alpha_bars[s]
    return jnp.sqrt(ab) * x_known + jnp.sqrt(1 - ab) * jax.random.normal(k, x_known.shape)

  def body(x, inputs):
    t, s, k = inputs
    k_step, k_known = jax.random.split(k)
    eps = eps_fn(params, x, jnp.full((batch,), t, jnp.int32), cond)
    x = step(schedule, x, t, s, eps, k_step, args)
    return jnp.where(mask, noised_known(s, k_known), x), None

  x_init = jnp.where(mask, noised_known(ts[0], k_init),
                     jax.random.normal(jax.random.fold_in(k_init, 1), x_known.shape))
  x, _ = jax.lax.scan(body, x_init, (ts[:-1], ts[1:], jax.random.split(k_loop, num_steps)))
  return jnp.where(mask, x_known, x)


def inpaint(eps_fn, params, schedule, x_known, mask, key, cond=None, *, sampler: str = "ddpm",
            num_steps: int = 100, **options: float):
  """Sample the pixels where `mask` is False given x_known ([-1, 1], same shape) elsewhere."""
  x_known = jnp.asarray(x_known)
  mask = jnp.broadcast_to(jnp.asarray(mask, bool), x_known.shape)
  args = sampler_args(sampler, **options)
  strided_timesteps(schedule.num_timesteps, num_steps)  # validates num_steps
  return _inpaint(eps_fn, params, schedule, x_known, mask, key, cond, args, sampler=sampler,
                  num_steps=num_steps)
