"""Gaussian diffusion as a removal process: scale the data down and add noise everywhere."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ardiff.diffusion import guidance
from ardiff.diffusion.samplers import sample as run_sampler
from ardiff.diffusion.schedules import Schedule, make_schedule
from ardiff.diffusion.targets import (TARGETS, eps_to_x0, noisy_sample_and_target,
                                      prediction_to_eps, x0_to_eps)


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
  """Trains `model(x_t, t/T, y)` to predict `target`; samples with any registered sampler.

  Frozen (hashable) so its bound methods can be static arguments of compiled sampling loops.
  """

  model: nn.Module
  num_classes: int
  schedule_name: str = "cosine"
  num_timesteps: int = 1000
  target: str = "eps"
  p_uncond: float = 0.1  # probability of dropping the label to null (classifier-free guidance)
  # Clip the implied x0 prediction to [-clip_x0, clip_x0] when sampling (None: no clipping).
  # Near t = T, alpha_bar is ~1e-9 for the cosine schedule and x0 = (x - sqrt(1-ab) eps)/sqrt(ab)
  # amplifies tiny eps errors by ~1e4; clipping to the data range is the standard remedy.
  clip_x0: float | None = None

  def __post_init__(self):
    if self.target not in TARGETS:
      raise ValueError(f"diffusion target must be one of {TARGETS}, got {self.target!r}")
    if self.clip_x0 is not None and self.clip_x0 <= 0:
      raise ValueError(f"clip_x0 must be positive or None, got {self.clip_x0}")
    if not 0.0 <= self.p_uncond <= 1.0:
      raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")
    make_schedule(self.schedule_name, self.num_timesteps)  # validates name and T

  @property
  def schedule(self) -> Schedule:
    return make_schedule(self.schedule_name, self.num_timesteps)

  @property
  def null_label(self) -> int:
    return self.num_classes

  def init_params(self, key, batch):
    x = batch["x"]
    t = jnp.ones((x.shape[0],), jnp.float32)
    return self.model.init(key, x, t, batch["y"])

  def predict(self, params, x_t, t, y, train=False, rngs=None):
    return self.model.apply(params, x_t, t.astype(jnp.float32) / self.num_timesteps, y,
                            train=train, rngs=rngs)

  def loss(self, params, batch, key, train=True):
    x0, y = batch["x"], batch["y"]
    k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 4)
    t = jax.random.randint(k_t, (x0.shape[0],), 1, self.num_timesteps + 1)
    if train and self.p_uncond > 0:
      y = jnp.where(jax.random.bernoulli(k_drop, self.p_uncond, y.shape), self.null_label, y)
    x_t, target = noisy_sample_and_target(self.target, self.schedule, x0, t, k_noise)
    pred = self.predict(params, x_t, t, y, train=train, rngs={"dropout": k_dropout})
    loss = jnp.mean((pred - target) ** 2)
    return loss, {"loss": loss}

  def eps_fn(self, params, x, t, y):
    """The noise prediction implied by the network, whatever its target (sampler interface)."""
    schedule = self.schedule
    eps = prediction_to_eps(self.target, schedule, self.predict(params, x, t, y), x, t)
    if self.clip_x0 is None:
      return eps
    x0 = jnp.clip(eps_to_x0(schedule, eps, x, t), -self.clip_x0, self.clip_x0)
    return x0_to_eps(schedule, x0, x, t)

  def sample(self, params, key, num_samples: int, shape: tuple[int, ...], *,
             labels=None, guidance_scale: float | None = None, negative_label=None,
             sampler: str = "ddim", num_steps: int = 50, return_trajectory: bool = False,
             **sampler_options: Any):
    """Draw samples. labels=None samples unconditionally (null label).

    guidance_scale=None uses the conditional model as is; a float w applies classifier-free
    guidance (w=0 unconditional / negative-conditioned, w=1 conditional, w>1 stronger).
    """
    k_init, k_loop = jax.random.split(key)
    x_init = jax.random.normal(k_init, (num_samples, *shape))
    if labels is None:
      labels = jnp.full((num_samples,), self.null_label, jnp.int32)
    labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (num_samples,))
    if guidance_scale is None and negative_label is None:
      eps_fn, cond = self.eps_fn, labels
    else:
      eps_fn = guidance.guided(self.eps_fn)
      cond = guidance.guidance_cond(labels, 1.0 if guidance_scale is None else guidance_scale,
                                    self.null_label, negative_label)
    return run_sampler(eps_fn, params, self.schedule, x_init, k_loop, cond, sampler=sampler,
                       num_steps=num_steps, return_trajectory=return_trajectory,
                       **sampler_options)
