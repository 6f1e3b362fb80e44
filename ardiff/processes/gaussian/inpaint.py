"""Completion (inpainting) with any registered diffusion sampler, by replacement.

The chain starts from x_T ~ N(0, I) on the unknown pixels and q(x_T | x_known) on the known
ones. Every step runs the registered sampler's update on the whole image from t to s, then
replaces the known pixels by a fresh draw from q(x_s | x_known) = N(sqrt(ab_s) x_known,
(1 - ab_s) I) (the "replacement" method, Song et al. 2021), so the unknown pixels are always
denoised next to a consistently noised copy of the known ones. At s = 0 that copy is x_known
itself, and the returned image is forced to equal x_known on the mask bit for bit. Any eps_fn
and cond work, the guided ones of `guidance.guided` included.

Bias, honestly: replacement does not sample the exact conditional p(x_unknown | x_known).
The known part of x_s is drawn from q(x_s | x_known) alone, independent of the unknown
part the chain has built so far, so the pair never has the joint law of the true conditional
chain; the condition reaches the unknown pixels only through each step's denoiser reading a
noisy copy of it, which at high noise says little. The unknown pixels end up pulled less
towards the condition than they should be.
tests/processes/gaussian/test_inpaint.py computes the output distribution of this procedure exactly (moment
propagation in float64, matched by the samples) for two pixels with variance 0.25 and
correlation 0.9, the exact eps, the cosine schedule with T = 200, and pixel 1 = 0.8 known. The
exact conditional of pixel 2 is N(0.72, 0.218^2); replacement gives N(0.497, 0.273^2) with
DDPM at 200 steps and N(0.362, 0.316^2) with deterministic DDIM at 50 steps: the mean gets
only 70% (DDPM) or 50% (DDIM) of the way from the prior mean 0 to the conditional mean, and
the spread is 25-45% too wide. Use it for plausible completions; do not read its samples as
the model's conditional distribution.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from ardiff.processes import discrete
from ardiff.processes.gaussian.samplers import SAMPLERS, sampler_args
from ardiff.processes.gaussian.samplers.base import EpsFn
from ardiff.processes.gaussian.schedules import Schedule, strided_timesteps
from ardiff.processes.gaussian.targets import noisy_sample_and_target


@functools.partial(
    jax.jit, static_argnames=("eps_fn", "sampler", "num_steps", "return_trajectory"))
def _inpaint(eps_fn, params, schedule, x_known, mask, key, cond, args, *, sampler, num_steps,
             return_trajectory):
  step = SAMPLERS.get(sampler).step
  ts = jnp.asarray(strided_timesteps(schedule.num_timesteps, num_steps))
  batch = x_known.shape[0]
  k_init, k_known, k_loop = jax.random.split(key, 3)

  def replace_known(x, s, k):
    noised, _ = noisy_sample_and_target("eps", schedule, x_known, jnp.full((batch,), s), k)
    return jnp.where(mask, noised, x)

  def body(x, inputs):
    t, s, k = inputs
    k_step, k_replace = jax.random.split(k)
    eps = eps_fn(params, x, jnp.full((batch,), t, jnp.int32), cond)
    x = replace_known(step(schedule, x, t, s, eps, discrete.example_keys(k_step, batch), args),
                    s, k_replace)
    return x, (x if return_trajectory else None)

  x_init = replace_known(jax.random.normal(k_init, x_known.shape), ts[0], k_known)
  x, traj = jax.lax.scan(body, x_init, (ts[:-1], ts[1:], jax.random.split(k_loop, num_steps)))
  x = jnp.where(mask, x_known, x)
  return (x, traj) if return_trajectory else x


def inpaint(eps_fn: EpsFn, params: Any, schedule: Schedule, x_known, mask, key, cond: Any = None,
            *, sampler: str = "ddpm", num_steps: int = 100, return_trajectory: bool = False,
            **options: float):
  """Sample the pixels where `mask` is False, keeping x_known where it is True.

  x_known: float [B, ...] in the model's data space ([-1, 1] for images); its values under
  ~mask are ignored. mask: bool, broadcastable to x_known's shape (e.g. [H, W, 1] for one
  mask for the whole batch). eps_fn / cond / sampler / num_steps / options are those of
  `samplers.sample` (eps_fn must be hashable). Returns the completed images, equal to x_known
  exactly on the mask, or (images, trajectory [num_steps, B, ...]) with `return_trajectory`
  (the state after each step's replacement).
  """
  x_known = jnp.asarray(x_known)
  if not jnp.issubdtype(x_known.dtype, jnp.floating) or x_known.ndim < 2:
    raise ValueError(
        f"x_known must be float [B, ...] in data space, got {x_known.dtype} {x_known.shape}")
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
  try:
    mask = jnp.broadcast_to(mask, x_known.shape)
  except ValueError:
    raise ValueError(
        f"mask of shape {mask.shape} does not broadcast to x_known's {x_known.shape}") from None
  args = sampler_args(sampler, **options)  # validates name and options before tracing
  strided_timesteps(schedule.num_timesteps, num_steps)  # validates num_steps
  return _inpaint(eps_fn, params, schedule, x_known, mask, key, cond, args, sampler=sampler,
                  num_steps=num_steps, return_trajectory=return_trajectory)
