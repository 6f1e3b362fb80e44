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
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.report import write_results
from ardiff.train import num_params

SMOKE_OVERRIDES = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
                   "unet.base_channels=8", "diffusion.num_timesteps=8", "num_samples=70",
                   "ks=[64]", "nfes=[2]", "seeds=[0]", "classifier_steps=20"]


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  # The same sections as digits_ar.py and digits_diffusion.py, so their models are reused.
  c = zoo.digits_config(scale, ar=True, diffusion=True)
  c.num_samples = 300
  c.seeds = [0, 1, 2]
  c.ks = [1, 2, 4, 8, 16, 32, 64]
  # 1000 NFE x 3 seeds costs ~10 CPU minutes at this size: it is in the paper scale (and
  # digits_diffusion.py reports DDPM 1000 once).
  c.nfes = [2, 4, 8, 16, 32, 64, 128, 256]
  if scale == "paper":
    c.nfes = [2, 4, 8, 16, 32, 64, 128, 256, 1000]
    c.num_samples = 2000
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  zoo.validate_digits_config(c)
  require(len(c.seeds) >= 1, "seeds", "needs at least one sampling seed")
  require(all(1 <= n <= c.diffusion.num_timesteps for n in c.nfes), "nfes",
          f"each must be in 1..diffusion.num_timesteps={c.diffusion.num_timesteps}")
  require(c.num_samples >= 2, "num_samples", "must be >= 2")


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

  def record(method: str, nfe: int, images: list[np.ndarray], params, **extra):
    stats = _stats([quality.frechet(x) for x in images])
    rows.append({"method": method, "NFE": nfe, **stats, "params": num_params(params), **extra})
    series.setdefault(method, ([], []))
    series[method][0].append(nfe)
    series[method][1].append(stats["fd"])
    return images[0]

  raster, raster_params = zoo.train_ar("raster", c, workdir, data, c.ar, c.train)
  x = record("raster AR (1 pixel/step)", L,
             [zoo.untokens(raster.sample(raster_params, k, null), data) for k in keys], raster_params)
  grids.append((f"raster AR, {L} NFE", x[:10]))

  ardm, ardm_params = zoo.train_ar("ardm", c, workdir, data, c.ar, c.train)
  for k in c.ks:
    plan = chunk_plan(L, k)
    x = record("ARDM, k contiguous pixels/step", L // k,
               [zoo.untokens(ardm.sample(ardm_params, key, null, plan=plan), data) for key in keys],
               ardm_params, k=k)
    if k in (4, 16):
      grids.append((f"ARDM contiguous k={k}, {L // k} NFE", x[:10]))
    x = record("ARDM, k random pixels/step", L // k,
               [zoo.untokens(ardm.sample(ardm_params, key, null, k=k), data) for key in keys],
               ardm_params, k=k)
    if k in (4, 16):
      grids.append((f"ARDM random k={k}, {L // k} NFE", x[:10]))
  fit, _ = budget_losses(ardm, ardm_params, data, jax.random.key(7))
  for k in c.ks:
    sizes, _ = optimal_budget(fit, L // k)
    record("ARDM, random, DP budget", L // k,
           [zoo.untokens(ardm.sample(ardm_params, key, null, step_sizes=sizes), data)
            for key in keys], ardm_params, k=k)

  diffusion, diff_params = zoo.train_diffusion(c, workdir, data, c.unet, c.diffusion, c.train)
  for sampler in ("ddpm", "ddim"):
    for nfe in c.nfes:
      x = record(f"diffusion {sampler.upper()}", nfe,
                 [np.asarray(unit_to_levels(diffusion.sample(diff_params, key, n, data.shape,
                                                             sampler=sampler, num_steps=nfe),
                                            data.num_levels)).astype(np.uint8) for key in keys],
                 diff_params)
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
                  styles=styles, title="Digits: quality vs network evaluations")
  plots.image_grid(np.concatenate([g for _, g in grids]), os.path.join(workdir, "grids_by_nfe.png"),
                   nrow=10, row_labels=[name for name, _ in grids], vmax=data.num_levels - 1,
                   title="Samples at a few budgets")
  notes = (f"Digits 8x8 (1500 train / 297 test), {n} unconditional samples per point, "
           f"{len(c.seeds)} sampling seeds (fd = mean, fd_std = spread); one training seed. "
           f"Floor (train split vs test, n={n}): {floor:.3g}. Budgets matched: every network "
           f"trains {c.train.steps} steps of batch {c.train.batch_size} on the same split; "
           "parameter counts in the params column. The contiguous and random ARDM rows use the "
           "same network and differ only in which pixels each step reveals.")
  write_results(workdir, rows, "AR vs diffusion: quality against network evaluations", notes)
  return rows
