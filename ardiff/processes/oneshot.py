"""One-shot regression: predict every pixel at once from the label alone, trained with MSE.

The opposite extreme of a removal process: everything is removed in a single step and the
network must put it all back in one prediction. With squared error the optimum for an input
y is E[x | y], so from the null label ("from nothing") the network can only learn the data
mean, and from a class label the class mean: a blurry average, never a sample. The model is
deterministic; `sample` (spec `oneshot`, one network evaluation) returns the same image for
every draw with the same label, and `sample_history` that one step's state. The network
(`ardiff.models.label_mlp`) is injected.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.data.levels import unit_to_level_scale, unit_to_levels
from ardiff.models.label_mlp import LabelToImageMLP
from ardiff.processes.guidance import Guidance, check_labels
from ardiff.processes.spec import SampleSpec, check_spec, parse_spec


@dataclasses.dataclass(frozen=True)
class OneShotRegression:
  """A `Process`: x [B, *shape] floats in [-1, 1] regressed from y with mean squared error.

  Labels are dropped to the null label with probability `p_uncond` during training, so the
  same network answers "from nothing" (null label: the data mean) and "from the class".
  """
  inputs = "continuous"  # floats in [-1, 1] (`model_cache.model_inputs`)

  model: LabelToImageMLP
  shape: tuple[int, ...]
  p_uncond: float = 0.1
  num_levels: int | None = None  # images: samples come back as levels; None: floats

  def __post_init__(self):
    object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
    if not self.shape or any(s < 1 for s in self.shape):
      raise ValueError(f"shape must be a non-empty tuple of positive sizes, got {self.shape}")
    if not 0.0 <= self.p_uncond <= 1.0:
      raise ValueError(f"p_uncond must lie in [0, 1], got {self.p_uncond}")
    if math.prod(self.shape) != self.model.num_outputs:
      raise ValueError(f"shape {self.shape} must hold the network's {self.model.num_outputs} "
                       "outputs")

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def null_label(self) -> int:
    return self.num_classes

  def init_params(self, key, batch):
    return self.model.init(key, jnp.asarray(batch["y"], jnp.int32))

  def _raw(self, params, y):
    y = jnp.asarray(y, jnp.int32)
    return self.model.apply(params, y).reshape(y.shape[0], *self.shape)

  def loss(self, params, batch, key, train=True):
    x, y = batch["x"], jnp.asarray(batch["y"], jnp.int32)
    if train and self.p_uncond > 0:
      y = jnp.where(jax.random.bernoulli(key, self.p_uncond, y.shape), self.null_label, y)
    loss = jnp.mean((self._raw(params, y) - x) ** 2)
    return loss, {"loss": loss}

  def predict(self, params, y) -> jax.Array:
    """The prediction for labels y [B], clipped to the data range [-1, 1]: [B, *shape]."""
    return jnp.clip(self._raw(params, y), -1.0, 1.0)

  samplers = {"oneshot": {}}
  deterministic = True  # the same label always gives the same sample

  def parse(self, spec: "SampleSpec | str") -> SampleSpec:
    spec = parse_spec(spec)
    check_spec(spec, self.samplers, process="one-shot regression")
    return spec

  def nfe(self, spec: "SampleSpec | str", *, guidance: Guidance | None = None) -> int:
    self.parse(spec)
    if guidance is not None:
      raise ValueError("one-shot regression has no guidance (it has no sampling loop)")
    return 1

  def sample(self, params, key, labels, spec: "SampleSpec | str" = "oneshot", *,
             guidance: Guidance | None = None, mesh=None) -> jax.Array:
    """The prediction for each label, in data space (levels for images). No randomness: key is
    unused and the same label always gives the same image."""
    del key, mesh  # one network call, nothing to shard that is worth it
    self.nfe(spec, guidance=guidance)
    x = self.predict(params, check_labels(labels, self.num_classes, None))
    if self.num_levels is None:
      return x
    return unit_to_levels(x, self.num_levels).astype(jnp.uint8 if self.num_levels <= 256
                                                     else jnp.int32)

  def sample_history(self, params, key, labels, spec: "SampleSpec | str" = "oneshot"
                     ) -> np.ndarray:
    """The one step's state in data space, float32 [1, B, *shape]: the prediction on the level
    scale (x + 1) / 2 (L - 1), unrounded, for images (np.round of it is `sample`'s output),
    the prediction itself for floats."""
    self.nfe(spec)
    x = np.asarray(self.predict(params, check_labels(labels, self.num_classes, None)),
                   np.float32)
    if self.num_levels is not None:
      x = unit_to_level_scale(x, self.num_levels)
    return x[None]
