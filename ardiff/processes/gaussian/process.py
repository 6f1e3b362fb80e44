"""Gaussian diffusion as a removal process: scale the data down and add noise everywhere."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ardiff import parallel
from ardiff.data.levels import unit_to_level_scale, unit_to_levels
from ardiff.processes import randomness
from ardiff.processes.gaussian import samplers
from ardiff.processes.gaussian.samplers.base import per_example_normal
from ardiff.processes.guidance import Guidance, check_labels, guidance_cond, guided
from ardiff.processes.spec import SampleSpec, check_spec, parse_spec
from ardiff.processes.gaussian.schedules import Schedule, make_schedule
from ardiff.processes.gaussian.targets import (TARGETS, bcast, noisy_sample_and_target,
                                              prediction_to_eps)


class TrainingDraw(NamedTuple):
  x0: jax.Array  # the batch in model space
  y: jax.Array  # labels, some dropped to the null label
  t: jax.Array  # integer timesteps [B] in 1..T
  x_t: jax.Array  # x0 noised to t
  target: jax.Array  # what the network regresses at (x_t, t)
  dropout_key: jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianDiffusion:
  """Trains an injected `model(x_t, t/T, y)` to predict `target`; samples with any registered
  sampler through the common contract (`ardiff.processes.base`).

  Frozen (hashable) so its bound methods can be static arguments of compiled sampling loops.
  """
  inputs = "continuous"  # floats in model space (`model_cache.model_inputs`)

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
  data_shape: tuple[int, ...] = ()  # the shape of one example, e.g. (2,) or (8, 8, 1)
  num_levels: int | None = None  # images: grey levels (samples come back as levels); None: points
  # Points: model space is (x - data_center) / data_scale per dimension (the training split's
  # mean and std), so the network and the samplers see unit-variance data whatever the
  # user's units: the noise scale, sigma_max and any clip then mean the same on every dataset.
  # None: the identity (images are already in [-1, 1]).
  data_center: tuple[float, ...] | None = None
  data_scale: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.target not in TARGETS:
      raise ValueError(f"diffusion target must be one of {TARGETS}, got {self.target!r}")
    if self.clip_x0 is not None and self.clip_x0 <= 0:
      raise ValueError(f"clip_x0 must be positive or None, got {self.clip_x0}")
    if not 0.0 <= self.p_uncond <= 1.0:
      raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")
    make_schedule(self.schedule_name, self.num_timesteps)  # validates name and T
    object.__setattr__(self, "data_shape", tuple(int(d) for d in self.data_shape))
    for name in ("data_center", "data_scale"):
      value = getattr(self, name)
      if value is not None:
        value = tuple(float(v) for v in value)
        if self.num_levels is not None or len(self.data_shape) != 1 or \
            len(value) != self.data_shape[0]:
          raise ValueError(f"{name} is for points: one value per dimension of data_shape "
                           f"{self.data_shape}, got {value}")
        object.__setattr__(self, name, value)
    if self.data_scale is not None and min(self.data_scale) <= 0:
      raise ValueError(f"data_scale must be positive, got {self.data_scale}")

  @property
  def schedule(self) -> Schedule:
    return make_schedule(self.schedule_name, self.num_timesteps)

  @property
  def null_label(self) -> int:
    return self.num_classes

  def init_params(self, key, batch):
    # One compiled program on one example, not op-by-op: a UNet's eager init compiles each of
    # its ~100 random draws apart (18 s against 12 s jitted for the tiny test UNet on 2 cores).
    x, y = batch["x"][:1], batch["y"]
    y = None if y is None else y[:1]
    return jax.jit(self.model.init)(key, x, jnp.ones((1,), jnp.float32), y)

  def predict(self, params, x_t, u, y, train=False, rngs=None):
    """The network's output at real times u [B] in [0, 1] (u = t / T on the training grid)."""
    return self.model.apply(params, x_t, u.astype(jnp.float32), y, train=train, rngs=rngs)

  def to_model(self, x: jax.Array) -> jax.Array:
    """Data space -> model space for float inputs (points: standardised; images: as is)."""
    if self.data_center is not None:
      x = x - jnp.asarray(self.data_center, x.dtype)
    if self.data_scale is not None:
      x = x / jnp.asarray(self.data_scale, x.dtype)
    return x

  def training_draw(self, batch, key, train=True) -> TrainingDraw:
    """What every Gaussian loss draws for a batch: t ~ U{1..T} per example, the label dropped
    to null with probability p_uncond (training only: classifier-free guidance), x_t ~ q(x_t |
    x0) and the regression target of `self.target`, and the network's dropout key."""
    x0, y = self.to_model(batch["x"]), batch["y"]
    k_t, k_noise, k_drop, k_dropout = jax.random.split(key, 4)
    t = jax.random.randint(k_t, (x0.shape[0],), 1, self.num_timesteps + 1)
    if train and self.p_uncond > 0:
      y = jnp.where(jax.random.bernoulli(k_drop, self.p_uncond, y.shape), self.null_label, y)
    x_t, target = noisy_sample_and_target(self.target, self.schedule, x0, t, k_noise)
    return TrainingDraw(x0, y, t, x_t, target, k_dropout)

  def loss(self, params, batch, key, train=True):
    draw = self.training_draw(batch, key, train)
    pred = self.predict(params, draw.x_t, draw.t / self.num_timesteps, draw.y, train=train,
                        rngs={"dropout": draw.dropout_key})
    loss = jnp.mean((pred - draw.target) ** 2)
    return loss, {"loss": loss}

  def eps_fn(self, params, x, u, y):
    """The noise prediction implied by the network at real times u [B] in [0, 1], whatever
    its target (the samplers' model function)."""
    eps = prediction_to_eps(self.target, self.schedule.alpha_bar_at(u),
                            self.predict(params, x, u, y), x,
                            self.schedule.alpha_bar_at(u - 1.0 / self.num_timesteps))
    return self.clip_eps(eps, x, u)

  def clip_eps(self, eps, x, u):
    """eps whose implied x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) is clipped to [-clip_x0,
    clip_x0] (eps unchanged when clip_x0 is None), at real times u [B]."""
    if self.clip_x0 is None:
      return eps
    ab = bcast(self.schedule.alpha_bar_at(u), x).astype(x.dtype)
    x0 = jnp.clip((x - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -self.clip_x0, self.clip_x0)
    return (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)

  # ---------------------------------------------------------------- sampling

  def model_fn(self, spec: SampleSpec, guidance: Guidance | None = None):
    """The samplers' model function for a parsed spec: `eps_fn`, guided when asked."""
    return self.eps_fn if guidance is None else guided(self.eps_fn)

  def parse(self, spec: "SampleSpec | str") -> SampleSpec:
    """Validate a spec such as 'ddim:50:eta=0.5' against the sampler registry and T."""
    spec = parse_spec(spec)
    names = samplers.SAMPLERS.names()
    check_spec(spec, {name: samplers.sampler_options(name) for name in names},
               process="Gaussian diffusion", needs_steps=names)
    # At most T steps: the network learned the T times t / T, so a finer grid only evaluates
    # it between them, and an absurd count (ddim:100000000) would first build a grid of that
    # many times on the host and then run for days with no output. (`trailing` had the cap.)
    if isinstance(spec.steps, int) and spec.steps > self.num_timesteps:
      raise ValueError(f"sampler {spec.name!r}: {spec.steps} steps is more than this model's "
                       f"{self.num_timesteps} training timesteps (diffusion.num_timesteps); "
                       f"give at most {self.num_timesteps}")
    options = spec.option_dict
    samplers.sampler_args(spec.name, **{k: v for k, v in options.items()
                                        if k not in samplers.base.COMMON_OPTIONS})
    samplers.sampling_times(self.schedule, spec.name, spec.steps, options)  # steps, spacing
    return spec

  def nfe(self, spec: "SampleSpec | str", *, guidance: Guidance | None = None) -> int:
    """Network evaluations: the solver's count (e.g. 2N - 1 for Heun's N steps), doubled when
    guided (conditional and negative streams run as one batch of twice the size)."""
    spec = self.parse(spec)
    return samplers.nfe(spec.name, spec.steps) * (1 if guidance is None else 2)

  def _run(self, params, key, labels, spec, guidance, mesh, trajectory: bool):
    """The sampling loop in model space: x_0 [B, ...], data parallel, or with `trajectory`
    (x_0, the state after every step [S, B, ...]) on one device (its batch axis is 1)."""
    spec = self.parse(spec)
    labels = check_labels(labels, self.num_classes, guidance)
    if not self.data_shape:
      raise ValueError("GaussianDiffusion.data_shape is not set: give the shape of one example")
    model_fn = self.model_fn(spec, guidance)

    def fn(params, keys, labels):
      x_init = per_example_normal(randomness.setup_keys(keys),
                                  jnp.zeros((labels.shape[0], *self.data_shape)))
      cond = labels if guidance is None else guidance_cond(labels, guidance, self.null_label)
      return samplers.sample(model_fn, params, self.schedule, x_init, keys, cond,
                             sampler=spec.name, num_steps=spec.steps,
                             return_trajectory=trajectory, **spec.option_dict)

    keys = randomness.example_keys(key, labels.shape[0])
    if trajectory:
      return fn(params, keys, labels)
    return parallel.run_sharded(fn, params, keys, labels, mesh)

  def sample_unit(self, params, key, labels, spec: "SampleSpec | str", *,
                  guidance: Guidance | None = None, mesh=None) -> jax.Array:
    """Samples in the model's space (floats; [-1, 1] for images), data parallel."""
    return self._run(params, key, labels, spec, guidance, mesh, trajectory=False)

  def to_data_floats(self, x: jax.Array) -> jax.Array:
    """Model space -> data space, unrounded: images on the level scale (x + 1) / 2 (L - 1)
    clipped to [0, L - 1] (`to_data` rounds this); points de-standardised as `to_data`."""
    if self.num_levels is None:
      return self.to_data(x)
    return unit_to_level_scale(x, self.num_levels)

  def to_data(self, x: jax.Array) -> jax.Array:
    """Model space -> data space: nearest integer level (uint8) for images; points are
    de-standardised."""
    if self.num_levels is None:
      if self.data_scale is not None:
        x = x * jnp.asarray(self.data_scale, x.dtype)
      if self.data_center is not None:
        x = x + jnp.asarray(self.data_center, x.dtype)
      return x
    dtype = jnp.uint8 if self.num_levels <= 256 else jnp.int32
    return unit_to_levels(x, self.num_levels).astype(dtype)

  def sample(self, params, key, labels, spec: "SampleSpec | str", *,
             guidance: Guidance | None = None, mesh=None) -> jax.Array:
    """Samples in data space for labels [B] (see `ardiff.processes.base`)."""
    return self.to_data(self.sample_unit(params, key, labels, spec, guidance=guidance,
                                         mesh=mesh))

  def sample_history(self, params, key, labels, spec: "SampleSpec | str") -> np.ndarray:
    """The state after each of the spec's S steps, in data space: float32 [S, B, *data_shape]
    (`to_data_floats`: images on the level scale, unrounded; points de-standardised). The
    last entry is the sample: its np.round (images) or itself (points) is `sample`'s output
    for the same key. Runs on one device."""
    _, trajectory = self._run(params, key, labels, spec, None, None, trajectory=True)
    return np.asarray(self.to_data_floats(trajectory), np.float32)

  def nll_bound(self, params, batch, key, *, num_t_samples: int | None = None):
    """The variational bound on -log2 P(x | y) / D of the grey levels, [B] bits per dimension
    (`likelihood`: prior + diffusion KLs + discretised decoder); batch["x"] in [-1, 1] as
    `loss` takes it, read back as the nearest levels. num_t_samples=None sums the T - 1
    diffusion KLs; K estimates that sum without bias from K uniform timesteps per example."""
    from ardiff.processes.gaussian import likelihood  # the bound's maths lives there

    levels = self._bound_levels(batch, num_t_samples)
    return likelihood._vlb_terms(self.bound_model_fn, params, self.schedule, levels,
                                 jnp.asarray(batch["y"], jnp.int32), key,
                                 num_levels=self.num_levels,
                                 num_t_samples=num_t_samples)["total"]

  @property
  def bound_model_fn(self):
    """The model function the bound reads: eps (fixed variances); learned-variance
    processes return (eps, fraction) instead (`likelihood.vlb_terms`)."""
    return self.eps_fn

  def _bound_levels(self, batch, num_t_samples) -> jax.Array:
    """batch["x"] in [-1, 1] -> integer levels, after checking that the bound is defined."""
    if self.num_levels is None:
      raise ValueError("the diffusion bound needs image data with grey levels (a discretised "
                       "decoder); points have no discrete likelihood")
    if num_t_samples is not None and (isinstance(num_t_samples, bool)
                                      or not isinstance(num_t_samples, int)
                                      or num_t_samples < 1):
      raise ValueError(f"num_t_samples must be None or a positive integer, got "
                       f"{num_t_samples!r}")
    return unit_to_levels(jnp.asarray(batch["x"]), self.num_levels)
