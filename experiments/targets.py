"""What the diffusion network predicts: next_step vs x0 vs eps vs v, quality against NFE.

  ardiff run experiments/targets.py --workdir=runs/targets

One UNet per target, each with digits_diffusion.py's `unet`, `diffusion` and `train` sections
except `diffusion.target` (so the eps model is digits_diffusion's cached model). Every
prediction is converted to the implied noise and sampled with the same DDIM and DDPM loops at
a range of network evaluations (NFE); quality is the Fréchet distance on the digit classifier's
features. Training losses of different targets are in different units and are not compared.
Writes targets.png, grids.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from ardiff import plots, zoo
from ardiff.config import require, require_choice
from ardiff.data import load_dataset
from ardiff.data.base import unit_to_levels
from ardiff.diffusion.config import diffusion_section
from ardiff.diffusion.targets import TARGETS
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.report import write_results

SMOKE_OVERRIDES = ["train.steps=4", "train.log_every=2", "unet.base_channels=8",
                   "diffusion.num_timesteps=10", "num_samples=40", "nfes=[2]",
                   "targets=['next_step', 'eps']", "classifier_steps=20"]

SAMPLERS = ("ddim", "ddpm")
COLORS = {"eps": "#1f77b4", "x0": "#d62728", "v": "#2ca02c", "next_step": "#ff7f0e"}


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.scale = scale
  c.seed = 0
  c.dataset = "digits"
  c.model_cache = "../models"
  c.classifier_steps = 1500
  # digits_diffusion.py's sections; diffusion.target is replaced by each entry of `targets`.
  c.unet = zoo.unet_section()
  c.diffusion = diffusion_section(clip_x0=1.0)
  c.train = zoo.train_section()
  c.targets = ["next_step", "x0", "v", "eps"]  # eps last: digits_diffusion may be training it
  c.num_samples = 300
  c.nfes = [2, 4, 8, 16, 64, 256]
  if scale == "paper":
    c.unet = zoo.unet_section(base_channels=64, channel_mult=(1, 2), num_res_blocks=2)
    c.train = zoo.train_section(steps=50_000, batch_size=256)
    c.num_samples = 2000
    c.nfes = [2, 4, 8, 16, 32, 64, 256, 1000]
  elif scale != "small":
    raise ValueError(f"config key 'scale': unknown value {scale!r}; choose from small, paper")
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  require_choice(c.scale, "scale", ["small", "paper"])
  zoo.validate_train(c.train, "train")
  require(len(c.targets) >= 1, "targets", "needs at least one target")
  for t in c.targets:
    require_choice(t, "targets", TARGETS)
  require(len(set(c.targets)) == len(c.targets), "targets", f"has duplicates: {list(c.targets)}")
  require(len(c.nfes) >= 1, "nfes", "needs at least one NFE")
  require(all(1 <= n <= c.diffusion.num_timesteps for n in c.nfes), "nfes",
          f"each must be in 1..diffusion.num_timesteps={c.diffusion.num_timesteps}")
  require(c.num_samples >= 2, "num_samples", "must be >= 2")


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = load_dataset(c.dataset)
  n, levels = c.num_samples, data.num_levels
  quality = SampleQuality.create(data, cache_dir=os.path.join(workdir, c.model_cache),
                                 steps=c.classifier_steps)
  key = jax.random.key(c.seed)
  floor = quality.floor(n)
  rows = [{"target": "data (train split vs test: floor)", "sampler": "", "NFE": 0, "fd": floor}]
  series, styles, grids = [], {}, []
  nfes = sorted(c.nfes)
  for target in c.targets:
    cfg = ml_collections.ConfigDict(c.diffusion.to_dict())
    cfg.target = target
    process, params = zoo.train_diffusion(c, workdir, data, c.unet, cfg, c.train)
    for sampler in SAMPLERS:
      fds = []
      for nfe in nfes:
        x = process.sample(params, key, n, data.shape, sampler=sampler, num_steps=nfe)
        x = np.asarray(unit_to_levels(x, levels)).astype(np.uint8)
        fds.append(quality.frechet(x))
        rows.append({"target": target, "sampler": sampler.upper(), "NFE": nfe, "fd": fds[-1]})
        if sampler == "ddim" and nfe in (nfes[0], nfes[-1]):
          grids.append((f"{target}, DDIM {nfe}", x[:12]))
      label = f"{target}, {sampler.upper()}"
      series.append((label, nfes, fds))
      styles[label] = dict(c=COLORS[target], ls="-" if sampler == "ddim" else "--")

  plots.line_plot(series, os.path.join(workdir, "targets.png"),
                  xlabel="network evaluations per image (NFE)",
                  ylabel="Fréchet distance (classifier features), lower is better",
                  logx=True, logy=True, hlines=[("floor: train split vs test", floor)],
                  styles=styles,
                  title="Diffusion targets: quality vs NFE (solid DDIM, dashed DDPM)")
  plots.image_grid(np.concatenate([g for _, g in grids]), os.path.join(workdir, "grids.png"),
                   nrow=12, row_labels=[name for name, _ in grids], vmax=levels - 1,
                   title="Unconditional DDIM samples per target, fewest and most NFE")

  notes = (f"Digits 8x8, 17 levels, split 1500/297. One UNet per target (base "
           f"{c.unet.base_channels}, mult {tuple(c.unet.channel_mult)}), {c.diffusion.schedule} "
           f"schedule, T={c.diffusion.num_timesteps}, {c.train.steps} steps of batch "
           f"{c.train.batch_size}: the same budget, only diffusion.target differs. Every "
           "prediction is converted to the implied eps (x0 clipped to [-1, 1], "
           f"clip_x0={c.diffusion.clip_x0}) and sampled by the same DDIM (eta=0) and DDPM loops "
           "over strided timesteps. next_step: the network regresses x_{t-1} (its optimum is "
           "the posterior mean), from which x0 is recovered with the one-step posterior "
           "coefficients. fd: Fréchet distance of "
           f"{n} unconditional samples (one sampling seed) to the test split on the digit "
           f"classifier's features; floor (train split vs test, same n): {floor:.3g}. Training "
           "losses are in each target's own units and not comparable, so they are not shown.")
  write_results(workdir, rows, "Diffusion targets: quality against network evaluations", notes)
  return rows
