"""The image models every experiment shares, built from config sections.

Experiments that use the same sections get the same cached model (see
`ardiff.experiment.model_dir`), so e.g. `ar_vs_diffusion.py` reuses what `digits_ar.py` and
`digits_diffusion.py` trained.

Scales (`image_config`):
  small  digits 8x8, models that train in minutes on a CPU (the README's numbers);
  paper  digits 8x8, the larger models and longer training the figures are quoted at;
  mnist  MNIST 28x28 (256 levels) through tensorflow-datasets, paper-size models trained in
         bfloat16 compute: a GPU or TPU job (see launch/).
"""

from __future__ import annotations

import ml_collections
import numpy as np

from ardiff.config import require, require_choice, require_positive
from ardiff.data.base import Dataset, levels_to_unit
from ardiff.diffusion.config import diffusion_section, make_diffusion, validate_diffusion
from ardiff.experiment import model_dir, train_cached
from ardiff.precision import COMPUTE_DTYPES, compute_dtype


def transformer_section(**overrides) -> ml_collections.ConfigDict:
  # remat: recompute activations in the backward pass (memory for compute; same model).
  base = dict(width=64, depth=2, heads=4, dropout=0.1, p_uncond=0.1, remat=False)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def unet_section(**overrides) -> ml_collections.ConfigDict:
  base = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, num_heads=4, dropout=0.1)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


def train_section(**overrides) -> ml_collections.ConfigDict:
  base = dict(steps=3000, batch_size=64, learning_rate=1e-3, warmup_steps=200, weight_decay=0.0,
              grad_clip=1.0, ema_decay=0.999, seed=0, log_every=250, checkpoint_every=1000,
              keep_checkpoints=2)
  base.update(overrides)
  return ml_collections.ConfigDict(base)


SCALES = ("small", "paper", "mnist")


def image_config(scale: str, *, ar: bool = False, diffusion: bool = False) -> ml_collections.ConfigDict:
  """The fields every image experiment shares, plus the model sections it trains.

  One definition of each scale's sections: experiments that train the same model get the
  same sections, hence the same config hash and the same cached model.
  """
  if scale not in SCALES:
    raise ValueError(f"config key 'scale': unknown value {scale!r}; choose from "
                     f"{', '.join(SCALES)}")
  big = scale in ("paper", "mnist")
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seed = 0
  c.dataset = "mnist" if scale == "mnist" else "digits"
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


def validate_image_config(c: ml_collections.ConfigDict) -> None:
  """Checks for the sections `image_config` made."""
  require_choice(c.scale, "scale", SCALES)
  require_choice(c.dtype, "dtype", COMPUTE_DTYPES)
  if "ar" in c:
    validate_transformer(c.ar, "ar")
  if "diffusion" in c:
    validate_diffusion(c.diffusion)
  validate_train(c.train, "train")


def validate_transformer(cfg, prefix: str) -> None:
  require_positive(cfg, prefix, "width", "depth", "heads")
  require(cfg.width % cfg.heads == 0, f"{prefix}.heads",
          f"width={cfg.width} must be divisible by heads={cfg.heads}")
  require(0 <= cfg.dropout < 1, f"{prefix}.dropout", f"must lie in [0, 1), got {cfg.dropout}")
  require(0 <= cfg.p_uncond <= 1, f"{prefix}.p_uncond", f"must lie in [0, 1], got {cfg.p_uncond}")


def validate_train(cfg, prefix: str) -> None:
  require_positive(cfg, prefix, "steps", "batch_size", "learning_rate", "log_every",
                   "checkpoint_every")


def tokens(levels: np.ndarray) -> np.ndarray:
  """uint8 images [N, H, W, C] -> int32 tokens [N, H*W*C] in raster order."""
  return np.asarray(levels).reshape(len(levels), -1).astype(np.int32)


def untokens(toks, dataset: Dataset) -> np.ndarray:
  return np.asarray(toks).reshape(-1, *dataset.shape).astype(np.uint8)


def raster_ar(cfg, dataset: Dataset, dtype: str = "float32"):
  from ardiff.autoregressive.processes import RasterAR

  return RasterAR(dataset.num_levels, dataset.num_tokens, dataset.num_classes, width=cfg.width,
                  depth=cfg.depth, heads=cfg.heads, dropout=cfg.dropout, p_uncond=cfg.p_uncond,
                  dtype=compute_dtype(dtype, "dtype"), remat=cfg.remat)


def order_agnostic_ar(cfg, dataset: Dataset, dtype: str = "float32"):
  from ardiff.autoregressive.processes import OrderAgnosticAR

  return OrderAgnosticAR(dataset.num_levels, dataset.num_tokens, dataset.num_classes,
                         width=cfg.width, depth=cfg.depth, heads=cfg.heads, dropout=cfg.dropout,
                         p_uncond=cfg.p_uncond, dtype=compute_dtype(dtype, "dtype"),
                         remat=cfg.remat)


def image_diffusion(unet_cfg, diffusion_cfg, dataset: Dataset, dtype: str = "float32"):
  from ardiff.models.unet import UNet

  validate_diffusion(diffusion_cfg)
  model = UNet(base_channels=unet_cfg.base_channels, channel_mult=tuple(unet_cfg.channel_mult),
               num_res_blocks=unet_cfg.num_res_blocks, num_heads=unet_cfg.num_heads,
               dropout=unet_cfg.dropout, num_classes=dataset.num_classes,
               dtype=compute_dtype(dtype, "dtype"))
  return make_diffusion(diffusion_cfg, model, dataset.num_classes)


def train_ar(kind: str, config, workdir: str, dataset: Dataset, model_cfg, train_cfg):
  """Train (or restore) a raster ('raster') or order-agnostic ('ardm') AR model on tokens."""
  build = {"raster": raster_ar, "ardm": order_agnostic_ar}[kind]
  process = build(model_cfg, dataset, config.get("dtype", "float32"))
  # remat trades memory for compute and leaves the trained model as it is: not part of the key
  # (so a model trained with it on is reused with it off, and older caches stay valid).
  model_key = {k: v for k, v in model_cfg.items() if k != "remat"}
  directory = model_dir(config, workdir, f"{dataset.name}-{kind}", dataset.name, model_key,
                        train_cfg)
  state = train_cached(process, tokens(dataset.x_train), dataset.y_train, train_cfg, directory)
  return process, state.ema_params


def train_diffusion(config, workdir: str, dataset: Dataset, unet_cfg, diffusion_cfg, train_cfg):
  process = image_diffusion(unet_cfg, diffusion_cfg, dataset, config.get("dtype", "float32"))
  directory = model_dir(config, workdir, f"{dataset.name}-diffusion", dataset.name, unet_cfg,
                        diffusion_cfg, train_cfg)
  x = levels_to_unit(dataset.x_train, dataset.num_levels)
  state = train_cached(process, x, dataset.y_train, train_cfg, directory)
  return process, state.ema_params
