"""Diffusion config sections: validation and construction, shared by the experiments."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import ml_collections

from ardiff.config import require, require_choice, require_positive
from ardiff.diffusion.process import GaussianDiffusion
from ardiff.diffusion.samplers import SAMPLERS, sampler_args
from ardiff.diffusion.schedules import SCHEDULES
from ardiff.diffusion.targets import TARGETS


def diffusion_section(**overrides) -> ml_collections.ConfigDict:
  base = dict(schedule="cosine", num_timesteps=1000, target="eps", p_uncond=0.1, clip_x0=1.0)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def validate_diffusion(cfg: ml_collections.ConfigDict, prefix: str = "diffusion") -> None:
  require_choice(cfg.schedule, f"{prefix}.schedule", SCHEDULES.names())
  require_choice(cfg.target, f"{prefix}.target", TARGETS)
  require_positive(cfg, prefix, "num_timesteps")
  require(0.0 <= cfg.p_uncond <= 1.0, f"{prefix}.p_uncond", f"must lie in [0, 1], got {cfg.p_uncond}")
  require(cfg.clip_x0 is None or cfg.clip_x0 > 0, f"{prefix}.clip_x0",
          f"must be positive or None, got {cfg.clip_x0}")


def make_diffusion(cfg: ml_collections.ConfigDict, model: nn.Module, num_classes: int) -> GaussianDiffusion:
  return GaussianDiffusion(model, num_classes, cfg.schedule, cfg.num_timesteps, cfg.target,
                           cfg.p_uncond, cfg.clip_x0)


class SamplerRun(NamedTuple):
  """One sampling setting, written in configs as 'name:steps[:option=value,...]'."""

  sampler: str
  num_steps: int
  options: dict[str, float]

  @property
  def label(self) -> str:
    opts = ",".join(f"{k}={v:g}" for k, v in self.options.items())
    return f"{self.sampler.upper()} {self.num_steps}" + (f" ({opts})" if opts else "")


def parse_sampler_runs(specs, num_timesteps: int, key: str = "sample.runs") -> list[SamplerRun]:
  """Parse and validate e.g. ['ddpm:1000', 'ddim:50', 'ddpm:1000:noise=0']."""
  runs = []
  for spec in specs:
    parts = str(spec).split(":")
    require(len(parts) in (2, 3), key, f"{spec!r} must look like sampler:steps[:opt=value,...]")
    name = parts[0]
    require_choice(name, key, SAMPLERS.names())
    try:
      steps = int(parts[1])
    except ValueError:
      raise ValueError(f"config key {key!r}: steps in {spec!r} must be an integer") from None
    require(1 <= steps <= num_timesteps, key,
            f"{spec!r} asks for {steps} steps; it must be 1..num_timesteps={num_timesteps}")
    options = {}
    if len(parts) == 3 and parts[2]:
      for item in parts[2].split(","):
        require("=" in item, key, f"option {item!r} in {spec!r} must look like name=value")
        k, v = item.split("=", 1)
        options[k] = float(v)
    try:
      sampler_args(name, **options)
    except ValueError as e:
      raise ValueError(f"config key {key!r}: {e}") from None
    runs.append(SamplerRun(name, steps, options))
  return runs
