"""Completion (inpainting) with any registered diffusion sampler, by replacement.

The chain starts from x_T ~ N(0, I) on the unknown pixels and q(x_T | x_known) on the known
ones. Every step runs the registered sampler's update on the whole image from t to s (the
shared loop of `samplers.base`, with this module's replacement as its post-step hook), then
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
correlation 0.9, the exact eps, the cosine schedule with T = 200 on its training grid (spacing 'trailing', sigma_max = inf),
and pixel 1 = 0.8 known. The
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

from ardiff.processes import randomness
from ardiff.processes.gaussian.samplers.base import (EpsFn, loop_grid, per_example_normal,
                                                     run_loop, sampler_args, sampling_times)
from ardiff.processes.gaussian.schedules import Schedule


def _replace_known(x, s, i, hook_args):
  """Post-step hook: the known pixels become a fresh draw from q(x_s | x_known)."""
  schedule, x_known, mask, keys = hook_args
  ab = schedule.alpha_bar_at(s).astype(x.dtype)
  noise = per_example_normal(randomness.step_keys(keys, i), x)
  return jnp.where(mask, jnp.sqrt(ab) * x_known + jnp.sqrt(1.0 - ab) * noise, x)


@functools.partial(jax.jit, static_argnames=("eps_fn", "sampler", "return_trajectory"))
def _inpaint(eps_fn, params, schedule, x_known, mask, key, cond, args, times, num_steps, *,
             sampler, return_trajectory):
  batch = x_known.shape[0]
  keys = randomness.example_keys(key, batch)
  replace_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
  hook_args = (schedule, x_known, mask, replace_keys)
  x_init = per_example_normal(randomness.setup_keys(keys), x_known)
  x_init = _replace_known(x_init, times[0], jnp.int32(-1), hook_args)
  out = run_loop(eps_fn, params, schedule, x_init, keys, cond, args, times, sampler=sampler,
                 to_zero=True, num_steps=num_steps, hook=_replace_known, hook_args=hook_args,
                 return_trajectory=return_trajectory)
  x, traj = out if return_trajectory else (out, None)
  x = jnp.where(mask, x_known, x)
  return (x, traj) if return_trajectory else x


def inpaint(eps_fn: EpsFn, params: Any, schedule: Schedule, x_known, mask, key, cond: Any = None,
            *, sampler: str = "ddpm", num_steps: int = 100, return_trajectory: bool = False,
            **options: Any):
  """Sample the pixels where `mask` is False, keeping x_known where it is True.

  x_known: float [B, ...] in the model's data space ([-1, 1] for images); its values under
  ~mask are ignored. mask: bool, broadcastable to x_known's shape (e.g. [H, W, 1] for one
  mask for the whole batch). eps_fn / cond / sampler / num_steps / options (spacing and
  sigma_max included) are those of `samplers.sample` (eps_fn must be hashable). Returns the
  completed images, equal to x_known exactly on the mask, or (images, trajectory
  [num_steps, B, ...]) with `return_trajectory` (the state after each step's replacement).
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
  grid, n = loop_grid(sampling_times(schedule, sampler, num_steps, options),
                      schedule.log_snrs.dtype, pad=not return_trajectory)
  return _inpaint(eps_fn, params, schedule, x_known, mask, key, cond, args, grid, n,
                  sampler=sampler, return_trajectory=return_trajectory)
