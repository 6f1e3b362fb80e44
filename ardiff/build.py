"""Config sections -> a removal process with its injected network: a registry of builders.

    process = build("raster", model_cfg, dataset, dtype="float32")

Each builder has a code version: bump it when a change to the network's maths makes an
already-trained model wrong, and the model cache (`ardiff.model_cache.model_dir`) retrains
instead of silently loading the old parameters. This module is the only reader of the compute-dtype
switch (`config.dtype`).

Adding a process: write its folder under `ardiff/processes/`, then one builder here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from ardiff.data.base import DataSpec, Dataset
from ardiff.model_sections import (diffusion_section, oneshot_section, transformer_section,
                                   unet_section, validate_diffusion)
from ardiff.precision import compute_dtype
from ardiff.registry import Registry


@dataclasses.dataclass(frozen=True)
class Builder:
  fn: Callable[..., Any]  # fn(section, dataset, dtype, **extra) -> process
  # The code version of the network + process maths (1: as first released), or a function of
  # the dataset where the builder picks different networks for different data.
  version: int | Callable[[Dataset], int]
  # A tiny working example for tests and docs: () -> (section, extra build sections, specs).
  # tests/processes/test_contract.py runs every registered process through the sampling
  # contract with it, so a new process is tested by registering it.
  example: Callable[[], tuple[Any, dict, list[str]]] | None = None
  # The spec that draws the sample grids shown in TensorBoard during training
  # (`train.preview_every`): cheap, and representative of the process.
  preview: str = ""


BUILDERS: Registry[Builder] = Registry("process")


def register(name: str, version: int | Callable[[Dataset], int] = 1, example=None,
             preview: str = ""):
  def add(fn):
    BUILDERS.register(name)(Builder(fn, version, example, preview))
    return fn

  return add


def build(kind: str, section, dataset: "Dataset | DataSpec", dtype: str = "float32", **extra):
  """The process `kind` built from a config section and the data's description (a Dataset, or
  the DataSpec saved beside a trained model); `extra` holds the further sections a kind takes.

    kind                  process                                        section, extra
    raster                raster AR, causal transformer                  transformer
    raster_bidirectional  raster order, bidirectional transformer        transformer
    ardm                  order-agnostic AR (ARDM), bidirectional        transformer
    upscale               coarse-to-fine ARDM (level bins, then levels)  transformer, upscale=
    masked                masked (absorbing) diffusion                   transformer, masking=
    gaussian              Gaussian diffusion, UNet / MLP (points)        unet / model, diffusion=
    gaussian_transformer  Gaussian diffusion, transformer denoiser       transformer, diffusion=
    gaussian_learned_var  Gaussian diffusion, learned variances (UNet)   unet, diffusion=,
                                                                         learned_variance=
    oneshot               one-shot regression (the blurry-mean baseline) oneshot
  """
  return BUILDERS.get(kind).fn(section, dataset, compute_dtype(dtype, "dtype"), **extra)


def preview_spec(kind: str, process) -> str:
  """The builder's preview spec as this process takes it: a Gaussian process samples at most
  its T training timesteps, so a model trained on fewer than the spec's steps previews with
  one step per timestep ('' where the builder has no preview)."""
  from ardiff.processes.spec import parse_spec

  spec = BUILDERS.get(kind).preview
  limit = getattr(process, "num_timesteps", None)
  if not spec or limit is None:
    return spec
  parsed = parse_spec(spec)
  if isinstance(parsed.steps, int) and parsed.steps > limit:
    return str(dataclasses.replace(parsed, steps=limit))
  return spec


def code_version(kind: str, dataset: Dataset) -> int:
  version = BUILDERS.get(kind).version
  return version(dataset) if callable(version) else version


def _transformer(cfg, dataset: Dataset, dtype, causal: bool, input_vocab_size=None):
  from ardiff.models.transformer import Transformer

  return Transformer(vocab_size=dataset.num_levels, seq_len=dataset.num_tokens,
                     num_classes=dataset.num_classes, width=cfg.width, depth=cfg.depth,
                     heads=cfg.heads, dropout=cfg.dropout, causal=causal, dtype=dtype,
                     remat=cfg.get("remat", False), attention=cfg.get("attention", "xla"),
                     decode_attention=cfg.get("decode_attention", "xla"),
                     input_vocab_size=input_vocab_size, block_size=cfg.get("block_size"))


# Fields of a model section that change how the model is computed, not the model (its
# parameters and outputs): left out of the model cache's key.
COMPUTE_ONLY_FIELDS = ("remat", "attention", "decode_attention")



def _tiny_transformer():
  return transformer_section(width=16, depth=1, heads=2, dropout=0.0)


@register("raster", preview="raster",
          example=lambda: (_tiny_transformer(), {}, ["raster", "raster:temperature=0.8"]))
def raster(cfg, dataset: Dataset, dtype):
  from ardiff.processes.autoregressive.raster import RasterAR

  return RasterAR(_transformer(cfg, dataset, dtype, True), p_uncond=cfg.p_uncond,
                  data_shape=dataset.shape)


@register("ardm", preview="ardm:k=4", example=lambda: (_tiny_transformer(), {}, [
    "ardm", "ardm:k=3", "ardm:k=4:order=contiguous", "ardm:sizes=(1,15)", "confidence:4",
    "confidence:5:temperature=0:schedule=uniform:noise=1.0"]))
def ardm(cfg, dataset: Dataset, dtype):
  from ardiff.processes.autoregressive.order_agnostic import OrderAgnosticAR

  return OrderAgnosticAR(_transformer(cfg, dataset, dtype, False), p_uncond=cfg.p_uncond,
                         data_shape=dataset.shape)


@register("masked", preview="masked:16",
          example=lambda: (_tiny_transformer(), {"masking": {"schedule": "cosine"}},
                           ["masked:4", "masked:3:temperature=0.8", "confidence:4"]))
def masked(cfg, dataset: Dataset, dtype, masking=None):
  """Masked (absorbing) diffusion on ARDM's bidirectional transformer (cfg: the transformer
  section); `masking`: an optional section {schedule: linear|cosine|polynomial, power}."""
  from ardiff.configs.validation import ConfigError
  from ardiff.processes.masked.process import MaskedDiffusion
  from ardiff.processes.masked.schedules import MaskingSchedule

  masking = dict(masking or {})
  unknown = sorted(set(masking) - {"schedule", "power"})
  if unknown:
    raise ConfigError(f"config section 'masking' has no key(s) {unknown}; it has: power, "
                      "schedule")
  try:
    schedule = MaskingSchedule(masking.get("schedule", "linear"), masking.get("power", 2.0))
  except ValueError as e:
    raise ConfigError(f"config key 'masking': {e}") from None
  return MaskedDiffusion(_transformer(cfg, dataset, dtype, False), p_uncond=cfg.p_uncond,
                         data_shape=dataset.shape, schedule=schedule)


@register("upscale", preview="upscale:k=4",
          example=lambda: (_tiny_transformer(), {"upscale": {"divisors": [2, 1]}},
                           ["upscale", "upscale:k=3:temperature=0.8"]))
def upscale(cfg, dataset: Dataset, dtype, upscale=None):
  """Coarse-to-fine order-agnostic AR (`ardiff.processes.autoregressive.upscale`) on a
  bidirectional transformer (cfg: the transformer section); `upscale`: an optional section
  {divisors: nested divisors of the pixel levels, default [4, 1]}."""
  from ardiff.configs.validation import ConfigError
  from ardiff.processes.autoregressive.upscale import DEFAULT_DIVISORS, Stages, UpscaleAR

  upscale = dict(upscale or {})
  unknown = sorted(set(upscale) - {"divisors"})
  if unknown:
    raise ConfigError(f"config section 'upscale' has no key(s) {unknown}; it has: divisors")
  try:
    layout = Stages(dataset.num_levels, upscale.get("divisors", DEFAULT_DIVISORS))
  except ValueError as e:
    raise ConfigError(f"config key 'upscale.divisors': {e}") from None
  model = _transformer(cfg, dataset, dtype, False, input_vocab_size=layout.input_vocab_size)
  return UpscaleAR(model, layout.divisors, p_uncond=cfg.p_uncond, data_shape=dataset.shape)


@register("raster_bidirectional", preview="raster", example=lambda: (_tiny_transformer(), {}, [
    "raster", "raster:temperature=0.8"]))
def raster_bidirectional(cfg, dataset: Dataset, dtype):
  """Raster order with a bidirectional transformer + mask token, one step per example
  (`ardiff.processes.autoregressive.bidirectional_raster`)."""
  from ardiff.processes.autoregressive.bidirectional_raster import RasterBidirectional

  return RasterBidirectional(_transformer(cfg, dataset, dtype, False), p_uncond=cfg.p_uncond,
                             data_shape=dataset.shape)


# UNet version 2: its time embedding became the shared `models.embeddings` one (sin and cos
# halves in the other order), so UNets trained before it must retrain. Points version 2: the
# process standardises point data per dimension (its network sees unit-variance data).
@register("gaussian", preview="ddim:25", version=2,
          example=lambda: (unet_section(base_channels=8, channel_mult=(1,),
                                        num_res_blocks=1, num_heads=2, dropout=0.0),
                           {"diffusion": diffusion_section(num_timesteps=20)},
                           ["ddpm:4", "ddim:3", "ddim:3:eta=0.5", "ddpm:5:noise=0"]))
def gaussian(cfg, dataset: Dataset, dtype, diffusion=None):
  """Diffusion with a UNet (cfg: unet section) on images, or an MLP (cfg: model section with
  width and depth) on points; `diffusion` is the diffusion section."""
  from ardiff.processes.gaussian.process import GaussianDiffusion

  validate_diffusion(diffusion)
  if dataset.kind == "image":
    from ardiff.models.unet import UNet

    model = UNet(base_channels=cfg.base_channels, channel_mult=tuple(cfg.channel_mult),
                 num_res_blocks=cfg.num_res_blocks, num_heads=cfg.num_heads,
                 dropout=cfg.dropout, num_classes=dataset.num_classes, dtype=dtype)
  else:
    from ardiff.models.mlp import MLPDenoiser

    model = MLPDenoiser(dataset.num_classes, width=cfg.width, depth=cfg.depth, dtype=dtype)
  return GaussianDiffusion(model, dataset.num_classes, diffusion.schedule,
                           diffusion.num_timesteps, diffusion.target, diffusion.p_uncond,
                           diffusion.clip_x0, data_shape=dataset.shape,
                           num_levels=dataset.num_levels if dataset.kind == "image" else None,
                           data_center=dataset.center, data_scale=dataset.scale)


@register("gaussian_transformer", preview="ddim:25",
          example=lambda: (transformer_section(width=16, depth=1, heads=2, dropout=0.0),
                           {"diffusion": diffusion_section(num_timesteps=20)},
                           ["ddpm:4", "ddim:3", "dpmpp_2m:3"]))
def gaussian_transformer(cfg, dataset: Dataset, dtype, diffusion=None):
  """Diffusion on images with a transformer denoiser (`models.dit.DiffusionTransformer`).

  cfg: the AR transformers' section (width, depth, heads, dropout, remat; optional patch_size,
  default 1 = one token per pixel), so the backbone matches raster AR / ARDM's. `diffusion`: the
  diffusion section; its p_uncond is the one used (the transformer section's is ignored, as
  the UNet builder reads the diffusion section's). Images only.
  """
  from ardiff.configs.validation import ConfigError
  from ardiff.models.dit import DiffusionTransformer
  from ardiff.processes.gaussian.process import GaussianDiffusion

  if dataset.kind != "image":
    raise ConfigError(f"process 'gaussian_transformer' needs image data, got {dataset.kind!r} "
                      f"data {dataset.name!r} (use 'gaussian' for points)")
  validate_diffusion(diffusion)
  model = DiffusionTransformer(width=cfg.width, depth=cfg.depth, heads=cfg.heads,
                               num_classes=dataset.num_classes,
                               patch_size=cfg.get("patch_size", 1), dropout=cfg.dropout,
                               dtype=dtype, remat=cfg.get("remat", False),
                               attention=cfg.get("attention", "xla"))
  return GaussianDiffusion(model, dataset.num_classes, diffusion.schedule,
                           diffusion.num_timesteps, diffusion.target, diffusion.p_uncond,
                           diffusion.clip_x0, data_shape=dataset.shape,
                           num_levels=dataset.num_levels)


@register("gaussian_learned_var", preview="ddim:25",
          example=lambda: (unet_section(base_channels=8, channel_mult=(1,),
                                        num_res_blocks=1, num_heads=2, dropout=0.0),
                           {"diffusion": diffusion_section(num_timesteps=20)},
                           ["ddpm_learned:4", "ddim:3"]))
def gaussian_learned_var(cfg, dataset: Dataset, dtype, diffusion=None, learned_variance=None):
  """Image diffusion whose UNet (cfg: unet section, out_channels = 2C) also predicts the reverse
  variances, trained with the hybrid objective (`ardiff.processes.gaussian.learned_variance`);
  `diffusion` is the diffusion section (target eps), `learned_variance` an optional section
  {vlb_weight: lambda, default 0.001}."""
  from ardiff.configs.validation import require
  from ardiff.models.unet import UNet
  from ardiff.processes.gaussian.learned_variance import VLB_WEIGHT, LearnedVarianceDiffusion

  validate_diffusion(diffusion)
  require(dataset.kind == "image", "dataset", "gaussian_learned_var needs image data (grey "
          f"levels for its decoder term), got {dataset.kind!r} data")
  require(diffusion.target == "eps", "diffusion.target",
          f"learned variances are trained with the eps target, got {diffusion.target!r}")
  weight = (learned_variance or {}).get("vlb_weight", VLB_WEIGHT)
  require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight >= 0,
          "learned_variance.vlb_weight", f"must be a number >= 0, got {weight!r}")
  model = UNet(base_channels=cfg.base_channels, channel_mult=tuple(cfg.channel_mult),
               num_res_blocks=cfg.num_res_blocks, num_heads=cfg.num_heads,
               dropout=cfg.dropout, num_classes=dataset.num_classes,
               out_channels=2 * dataset.shape[-1], dtype=dtype)
  return LearnedVarianceDiffusion(model, dataset.num_classes, diffusion.schedule,
                                  diffusion.num_timesteps, diffusion.target, diffusion.p_uncond,
                                  diffusion.clip_x0, data_shape=dataset.shape,
                                  num_levels=dataset.num_levels, vlb_weight=float(weight))


@register("oneshot", preview="oneshot",
          example=lambda: (oneshot_section(width=16, depth=1), {}, ["oneshot"]))
def oneshot(cfg, dataset: Dataset, dtype):
  import math

  from ardiff.models.label_mlp import LabelToImageMLP
  from ardiff.processes.oneshot import OneShotRegression

  del dtype  # a small MLP: float32
  model = LabelToImageMLP(dataset.num_classes, math.prod(dataset.shape), cfg.width, cfg.depth)
  return OneShotRegression(model, dataset.shape, p_uncond=cfg.p_uncond,
                           num_levels=dataset.num_levels)
