"""Autoregression on 8x8 digits: raster AR (KV-cache sampling) and order-agnostic ARDM.

  ardiff run experiments/digits_ar.py --workdir=runs/digits_ar

Trains a causal transformer (raster order) and a bidirectional one (ARDM, any order) of the
same size on the same data and budget. Reports test bits per pixel (exact for raster AR, the
ARDM bound for ARDM), sample grids (unconditional and per class), sample quality (Fréchet
distance on the digit classifier's features, with its floor), and ARDM parallel decoding
budgets: uniform vs dynamic programming, as bpd of the bound against the number of steps.
Writes samples_raster.png, samples_ardm.png, per_class.png, budgets.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import plots, zoo
from ardiff.ar_eval import ardm_test_bpd, budget_losses, raster_test_bpd
from ardiff.autoregressive.budget import budget_cost, optimal_budget
from ardiff.autoregressive.orders import uniform_step_sizes
from ardiff.config import require
from ardiff.data import load_dataset
from ardiff.experiment import timed
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.report import write_results

SMOKE_OVERRIDES = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
                   "sample.num_samples=40", "sample.budget_steps=[1, 4]", "classifier_steps=20"]

LN2 = np.log(2.0)


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = zoo.image_config(scale, ar=True)
  c.sample = dict(num_samples=500, guidance=1.0, budget_steps=[1, 2, 4, 8, 16, 32, 64])
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  zoo.validate_image_config(c)
  require(c.sample.num_samples >= 2, "sample.num_samples", "must be >= 2")
  require(all(s >= 1 for s in c.sample.budget_steps), "sample.budget_steps", "must be >= 1")


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = load_dataset(c.dataset)
  L = data.num_tokens
  require(all(s <= L for s in c.sample.budget_steps), "sample.budget_steps",
          f"steps must be <= the number of pixels ({L})")
  x_test, y_test = zoo.tokens(data.x_test), data.y_test
  quality = SampleQuality.create(data, cache_dir=os.path.join(workdir, c.model_cache),
                                 steps=c.classifier_steps)
  n = c.sample.num_samples
  key = jax.random.key(c.seed)
  null = jnp.full((n,), data.num_classes, jnp.int32)
  labels = jnp.arange(n) % data.num_classes
  rows = [{"model": "data (train split)", "NFE": 0, "fd": quality.floor(n),
           "accuracy": quality.test_accuracy()}]

  raster, raster_params = zoo.train_ar("raster", c, workdir, data, c.ar, c.train)
  row = {"model": "raster AR (KV cache)", "NFE": L,
         "test_bpd": raster_test_bpd(raster, raster_params, x_test, y_test)}
  raster.sample(raster_params, key, null)  # compile
  with timed(row):
    uncond = np.asarray(jax.block_until_ready(raster.sample(raster_params, key, null)))
  cond = np.asarray(raster.sample(raster_params, key, labels, guidance=c.sample.guidance))
  row.update(fd=quality.frechet(zoo.untokens(uncond, data)),
             accuracy=quality.accuracy(zoo.untokens(cond, data), np.asarray(labels)))
  rows.append(row)
  plots.image_grid(zoo.untokens(uncond[:100], data), os.path.join(workdir, "samples_raster.png"),
                   nrow=10, title="Raster AR, unconditional", vmax=data.num_levels - 1)

  ardm, ardm_params = zoo.train_ar("ardm", c, workdir, data, c.ar, c.train)
  row = {"model": "ARDM (random order, 1 pixel/step)", "NFE": L,
         "test_bpd": ardm_test_bpd(ardm, ardm_params, x_test, y_test, key)}
  ardm.sample(ardm_params, key, null, k=1)
  with timed(row):
    a_uncond = np.asarray(jax.block_until_ready(ardm.sample(ardm_params, key, null, k=1)))
  a_cond = np.asarray(ardm.sample(ardm_params, key, labels, k=1, guidance=c.sample.guidance))
  row.update(fd=quality.frechet(zoo.untokens(a_uncond, data)),
             accuracy=quality.accuracy(zoo.untokens(a_cond, data), np.asarray(labels)))
  rows.append(row)
  plots.image_grid(zoo.untokens(a_uncond[:100], data), os.path.join(workdir, "samples_ardm.png"),
                   nrow=10, title="ARDM (random order), unconditional", vmax=data.num_levels - 1)

  # Per-class grid: one row per class, 10 samples each, both models.
  per = np.arange(100) // 10
  grid_r = np.asarray(raster.sample(raster_params, key, per, guidance=c.sample.guidance))
  grid_a = np.asarray(ardm.sample(ardm_params, key, per, k=1, guidance=c.sample.guidance))
  both = np.concatenate([zoo.untokens(grid_r, data).reshape(10, 10, *data.shape),
                         zoo.untokens(grid_a, data).reshape(10, 10, *data.shape)], axis=1)
  plots.image_grid(both.reshape(200, *data.shape), os.path.join(workdir, "per_class.png"),
                   nrow=20, row_labels=[str(i) for i in range(10)], vmax=data.num_levels - 1,
                   title=f"Per class (guidance w={c.sample.guidance:g}): raster AR | ARDM")

  # Step budgets: the bound of parallel decoding with S steps, uniform vs dynamic programming.
  fit, losses = budget_losses(ardm, ardm_params, data, jax.random.fold_in(key, 7))
  budget_rows, uniform_bpd, dp_bpd = [], [], []
  for steps in c.sample.budget_steps:
    uni = budget_cost(losses, uniform_step_sizes(L, -(-L // steps)))
    sizes, _ = optimal_budget(fit, steps)  # fitted on the train split, scored on test
    uniform_bpd.append(uni / (L * LN2))
    dp_bpd.append(budget_cost(losses, sizes) / (L * LN2))
    budget_rows.append({"model": f"ARDM budget, {steps} steps", "NFE": steps,
                        "uniform_bpd": uniform_bpd[-1], "dp_bpd": dp_bpd[-1],
                        "dp_sizes": "-".join(map(str, sizes)) if steps <= 16 else f"{len(sizes)} steps"})
  rows += budget_rows
  plots.line_plot([("uniform k per step", c.sample.budget_steps, uniform_bpd),
                   ("dynamic programming", c.sample.budget_steps, dp_bpd)],
                  os.path.join(workdir, "budgets.png"), xlabel="network evaluations (steps)",
                  ylabel="bound on test NLL (bits per pixel)", logx=True,
                  hlines=[("1 pixel / step (full ARDM bound)", float(losses.sum() / (L * LN2)))],
                  title="ARDM parallel decoding: step budgets")

  notes = (f"{data.description}. Both transformers: width {c.ar.width}, "
           f"depth {c.ar.depth}, {c.train.steps} steps of batch {c.train.batch_size}. "
           "test_bpd: bits per pixel on the test split (raster: exact NLL; ARDM: chain rule "
           "along one random order per example, an unbiased estimate of the ARDM bound). "
           f"fd: Fréchet distance of {n} unconditional samples to the test split on the digit "
           "classifier's features (floor: the train split, same n). accuracy: classifier "
           f"accuracy on class-conditional samples (guidance w={c.sample.guidance:g}; data row: "
           "classifier test accuracy). Budget rows: the bound (bpd) of decoding in S parallel "
           "steps, computed from per-step losses L_t on the test split; the DP picks the step "
           "sizes from L_t measured on 512 train images. seconds: wall time to draw the unconditional samples (compiled).")
  write_results(workdir, rows, f"{data.name}: autoregressive models", notes)
  return rows
