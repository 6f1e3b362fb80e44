"""The central comparison: sample quality against network evaluations, AR and diffusion on
one axis.

  ardiff run experiments/ar_vs_diffusion.py --workdir=runs/ar_vs_diffusion

Models (reused from digits_ar.py / digits_diffusion.py when their configs match):
  - raster AR, one pixel per step (causal transformer, KV cache): 64 NFE;
  - ARDM (bidirectional transformer), k pixels per step in contiguous raster chunks, and the
    SAME network with k pixels at random positions, k = 1..64 (NFE = 64/k), plus step budgets
    chosen by dynamic programming;
  - diffusion (UNet), DDPM and DDIM at NFE = 2..1000.
Quality: Fréchet distance on the digit classifier's features (floor: train split), mean and
spread over sampling seeds. Writes quality_vs_nfe.png, grids_by_nfe.png, results.md/.csv.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import plots, zoo
from ardiff.ar_eval import budget_losses
from ardiff.autoregressive.budget import optimal_budget
from ardiff.autoregressive.orders import chunk_plan
from ardiff.config import require
from ardiff.data import load_dataset
from ardiff.data.base import unit_to_levels
from ardiff.experiment import in_batches
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.report import write_results
from ardiff.train import num_params

SMOKE_OVERRIDES = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
                   "unet.base_channels=8", "diffusion.num_timesteps=8", "num_samples=70",
                   "ks=[64]", "nfes=[2]", "seeds=[0]", "classifier_steps=20"]


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  # The same sections as digits_ar.py and digits_diffusion.py, so their models are reused.
  c = zoo.image_config(scale, ar=True, diffusion=True)
  c.num_samples = 300
  c.seeds = [0, 1, 2]
  c.ks = [1, 2, 4, 8, 16, 32, 64]
  # 1000 NFE x 3 seeds costs ~10 CPU minutes at this size: it is in the paper scale (and
  # digits_diffusion.py reports DDPM 1000 once).
  c.nfes = [2, 4, 8, 16, 32, 64, 128, 256]
  if scale != "small":  # paper and mnist
    c.nfes = [2, 4, 8, 16, 32, 64, 128, 256, 1000]
    c.num_samples = 2000
  c.sample_batch = 0  # samples per network call; 0: all num_samples at once
  c.budget_examples = 512  # train images the step-budget DP is fitted on (L calls each)
  if scale == "mnist":  # each k must divide the 784 pixels: NFE 784, 392, ..., 4, 2
    c.ks = [1, 2, 4, 7, 14, 28, 49, 98, 196, 392]
    c.sample_batch = 250  # 2000 x [8 heads, 785, 785] attention maps at once: ~40 GB
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  zoo.validate_image_config(c)
  require(len(c.seeds) >= 1, "seeds", "needs at least one sampling seed")
  require(all(1 <= n <= c.diffusion.num_timesteps for n in c.nfes), "nfes",
          f"each must be in 1..diffusion.num_timesteps={c.diffusion.num_timesteps}")
  require(c.num_samples >= 2, "num_samples", "must be >= 2")
  require(c.budget_examples >= 1, "budget_examples", f"must be >= 1, got {c.budget_examples}")
  require(c.sample_batch >= 0, "sample_batch", f"must be >= 0 (0: all at once), got "
          f"{c.sample_batch}")


def _stats(values: list[float]) -> dict[str, float]:
  return {"fd": float(np.mean(values)), "fd_std": float(np.std(values)), "seeds": len(values)}


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = load_dataset(c.dataset)
  L, n = data.num_tokens, c.num_samples
  require(all(L % k == 0 for k in c.ks), "ks", f"each k must divide the {L} pixels")
  quality = SampleQuality.create(data, cache_dir=os.path.join(workdir, c.model_cache),
                                 steps=c.classifier_steps)
  null = jnp.full((n,), data.num_classes, jnp.int32)
  keys = [jax.random.key(s) for s in c.seeds]
  floor = quality.floor(n)
  rows, series, grids = [], {}, []

  def record(method: str, nfe: int, sample, params, **extra) -> np.ndarray:
    """sample(key, labels) -> uint8 images, once per seed, c.sample_batch labels at a time."""
    images = [in_batches(sample, key, null, c.sample_batch) for key in keys]
    stats = _stats([quality.frechet(x) for x in images])
    rows.append({"method": method, "NFE": nfe, **stats, "params": num_params(params), **extra})
    series.setdefault(method, ([], []))
    series[method][0].append(nfe)
    series[method][1].append(stats["fd"])
    return images[0]

  # Sample grids at the k whose NFE is nearest 16 and 4 (k = 4, 16 on digits; 49, 196 on MNIST).
  grid_ks = {min(c.ks, key=lambda k: abs(math.log(L / k / nfe))) for nfe in (16, 4)}

  raster, raster_params = zoo.train_ar("raster", c, workdir, data, c.ar, c.train)
  x = record("raster AR (1 pixel/step)", L,
             lambda key, y: zoo.untokens(raster.sample(raster_params, key, y), data),
             raster_params)
  grids.append((f"raster AR, {L} NFE", x[:10]))

  ardm, ardm_params = zoo.train_ar("ardm", c, workdir, data, c.ar, c.train)
  for k in c.ks:
    plan = chunk_plan(L, k)
    x = record("ARDM, k contiguous pixels/step", L // k,
               lambda key, y: zoo.untokens(ardm.sample(ardm_params, key, y, plan=plan), data),
               ardm_params, k=k)
    if k in grid_ks:
      grids.append((f"ARDM contiguous k={k}, {L // k} NFE", x[:10]))
    x = record("ARDM, k random pixels/step", L // k,
               lambda key, y: zoo.untokens(ardm.sample(ardm_params, key, y, k=k), data),
               ardm_params, k=k)
    if k in grid_ks:
      grids.append((f"ARDM random k={k}, {L // k} NFE", x[:10]))
  fit, _ = budget_losses(ardm, ardm_params, data, jax.random.key(7),
                         num_fit=c.budget_examples, num_eval=0)
  for k in c.ks:
    sizes, _ = optimal_budget(fit, L // k)
    record("ARDM, random, DP budget", L // k,
           lambda key, y: zoo.untokens(ardm.sample(ardm_params, key, y, step_sizes=sizes), data),
           ardm_params, k=k)

  diffusion, diff_params = zoo.train_diffusion(c, workdir, data, c.unet, c.diffusion, c.train)
  for sampler in ("ddpm", "ddim"):
    for nfe in c.nfes:
      def sample_diffusion(key, y):
        x = diffusion.sample(diff_params, key, len(y), data.shape, sampler=sampler,
                             num_steps=nfe)
        return np.asarray(unit_to_levels(x, data.num_levels)).astype(np.uint8)

      x = record(f"diffusion {sampler.upper()}", nfe, sample_diffusion, diff_params)
      if sampler == "ddim" and nfe in (8, 64):
        grids.append((f"DDIM, {nfe} NFE", x[:10]))

  styles = {"raster AR (1 pixel/step)": dict(marker="*", ms=14, ls="none", c="k"),
            "ARDM, k contiguous pixels/step": dict(c="#d62728"),
            "ARDM, k random pixels/step": dict(c="#1f77b4"),
            "ARDM, random, DP budget": dict(c="#1f77b4", ls="--"),
            "diffusion DDPM": dict(c="#2ca02c"), "diffusion DDIM": dict(c="#9467bd")}
  plots.line_plot([(name, xs, ys) for name, (xs, ys) in series.items()],
                  os.path.join(workdir, "quality_vs_nfe.png"),
                  xlabel="network evaluations per image (NFE)",
                  ylabel="Fréchet distance (classifier features), lower is better",
                  logx=True, logy=True, hlines=[("floor: train split vs test", floor)],
                  styles=styles, title=f"{data.name}: quality vs network evaluations")
  plots.image_grid(np.concatenate([g for _, g in grids]), os.path.join(workdir, "grids_by_nfe.png"),
                   nrow=10, row_labels=[name for name, _ in grids], vmax=data.num_levels - 1,
                   title="Samples at a few budgets")
  notes = (f"{data.description}, {n} unconditional samples per point, "
           f"{len(c.seeds)} sampling seeds (fd = mean, fd_std = spread); one training seed. "
           f"Floor (train split vs test, n={n}): {floor:.3g}. Budgets matched: every network "
           f"trains {c.train.steps} steps of batch {c.train.batch_size} on the same split; "
           "parameter counts in the params column. The contiguous and random ARDM rows use the "
           "same network and differ only in which pixels each step reveals.")
  write_results(workdir, rows, "AR vs diffusion: quality against network evaluations", notes)
  return rows
