"""The scales, the image experiments' shared sections, and the train section (defaults and
validation).

Experiments assemble their configs from these sections and the model sections
(`ardiff.model_sections`); models are cached by a hash of the sections that define them
(`ardiff.model_cache`), so experiments that use the same sections share one trained model. Scales
(`image_config`):
  small  digits 8x8, models that train in minutes on a CPU (docs/results.md's numbers);
  paper  digits 8x8, the larger models and longer training the figures are quoted at;
  mnist  MNIST 28x28 (256 levels) through tensorflow-datasets, paper-size models trained in
         bfloat16 compute: a GPU or TPU job (see launch/).
Every bad value raises `ConfigError` naming the key (the CLI prints it as one line, exit 2).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from ardiff.configs.sizes import SIZES
from ardiff.configs.validation import ConfigError, require_choice, require_positive
from ardiff.data.base import DataSpec
from ardiff.model_sections import (diffusion_section, require_null_label, transformer_section,
                                   unet_section, validate_diffusion, validate_transformer,
                                   validate_unet_shape)
from ardiff.precision import COMPUTE_DTYPES
from ardiff.presets.data import config_data_spec
from ardiff.train import TrainConfig


def train_section(**overrides) -> ml_collections.ConfigDict:
  """The training section: `TrainConfig`'s defaults (the one set) with overrides."""
  base = dataclasses.asdict(TrainConfig())
  unknown = set(overrides) - set(base)
  if unknown:
    raise ConfigError(f"train section has no key(s) {sorted(unknown)}")
  base.update(overrides)
  return ml_collections.ConfigDict(base)


SCALES = ("small", "paper", "mnist")


def image_config(scale: str, *, ar: bool = False, diffusion: bool = False) -> ml_collections.ConfigDict:
  """The fields every image experiment shares, plus the model sections it trains.

  One definition of each scale's sections: experiments that train the same model get the
  same sections, hence the same config hash and the same cached model.
  """
  require_choice(scale, "scale", SCALES)
  big = scale in ("paper", "mnist")
  c = ml_collections.ConfigDict()
  c.size = scale  # the size knob (`ardiff.configs.sizes`) records smoke/quick over it
  c.seed = 0
  c.dataset = "mnist" if scale == "mnist" else "digits"
  # dataset=npz: your own images from data.path (README "Your own data").
  c.data = ml_collections.ConfigDict(dict(path=""))
  # Compute dtype of every model: bfloat16 runs activations and matmuls in bf16 with float32
  # parameters and optimiser state (ardiff.precision); on CPUs bf16 is emulated, hence float32.
  c.dtype = "bfloat16" if scale == "mnist" else "float32"
  c.model_cache = "../models"  # relative to the work dir: runs/models, shared
  c.classifier_steps = 3000 if scale == "mnist" else 1500
  if ar:
    c.ar = transformer_section(width=256, depth=8, heads=8) if big else transformer_section()
  if diffusion:
    if scale == "mnist":  # 28 -> 14 -> 7, attention at 7x7
      c.unet = unet_section(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2)
    elif big:
      c.unet = unet_section(base_channels=64, channel_mult=(1, 2), num_res_blocks=2)
    else:
      c.unet = unet_section()
    c.diffusion = diffusion_section(clip_x0=1.0)
  if scale == "mnist":
    # XLA's estimate of one bf16 transformer step at L = 784 (compiled, not run, on CPU): 41 GiB
    # of temporaries at batch 64, 161 GiB at 256 (the [B, 8, 785, 785] attention maps of 8
    # layers), so batch 64 for one 80 GB GPU: 50k steps are still 53 epochs of MNIST.
    c.train = train_section(steps=50_000, batch_size=64, checkpoint_every=5000)
  elif big:
    c.train = train_section(steps=50_000, batch_size=256)
  else:
    c.train = train_section()
  return c


def validate_image_config(c: ml_collections.ConfigDict, null_label: bool = True) -> DataSpec:
  """Checks for the sections `image_config` made, and of the data they name; the DataSpec.

  null_label: the experiment samples with the null label (unconditional samples, guidance),
  so each model's p_uncond must be > 0 (label dropout is what trains the null label).
  """
  require_choice(c.size, "size", SIZES)
  require_choice(c.dtype, "dtype", COMPUTE_DTYPES)
  if "ar" in c:
    validate_transformer(c.ar, "ar")
  if "diffusion" in c:
    validate_diffusion(c.diffusion)
  if null_label:
    for name in ("ar", "diffusion"):
      if name in c:
        require_null_label(c[name].p_uncond, f"{name}.p_uncond")
  validate_train(c.train, "train")
  spec = config_data_spec(c, "image")
  if "unet" in c:
    validate_unet_shape(c.unet, spec.shape, "unet")
  return spec


def validate_train(cfg, prefix: str) -> None:
  """Every check of `TrainConfig`, with the keys named under `prefix`."""
  require_positive(cfg, prefix, "steps", "batch_size", "learning_rate", "log_every",
                   "checkpoint_every")
  try:
    TrainConfig.from_config(cfg)
  except ConfigError as e:
    raise ConfigError(str(e).replace("'train.", f"'{prefix}.", 1)) from None
  except (TypeError, ValueError) as e:  # e.g. a snapshot fraction that is not a number
    raise ConfigError(f"config section {prefix!r}: {e}") from None
