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
import ml_collections
import numpy as np

from ardiff import experiment_helpers, model_cache
from ardiff.configs import require, sized
from ardiff.data.levels import to_tokens
from ardiff.metrics import held_out
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes.autoregressive.budget import budget_cost, optimal_budget
from ardiff.processes.autoregressive.evaluate import budget_losses
from ardiff.processes.autoregressive.orders import uniform_step_sizes
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results

SMOKE = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
         "sample.num_samples=40", "sample.budget_steps=[1, 4]", "classifier_steps=20"]

LN2 = np.log(2.0)


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True)
  c.sample = ml_collections.ConfigDict(dict(
      num_samples=500, guidance=1.0, budget_steps=[1, 2, 4, 8, 16, 32, 64],
      runs={"raster": ["raster"], "ardm": ["ardm"]}))
  return c


TITLES = {"raster": "raster AR (KV cache)", "ardm": "ARDM (random order)"}


def validate(c: ml_collections.ConfigDict) -> None:
  from ardiff import build

  data = validate_image_config(c)
  require(c.sample.num_samples >= 2, "sample.num_samples", "must be >= 2")
  require(all(s >= 1 for s in c.sample.budget_steps), "sample.budget_steps", "must be >= 1")
  require(set(c.sample.runs) == set(TITLES), "sample.runs", f"needs spec lists for {list(TITLES)}")
  require(all(s <= data.num_tokens for s in c.sample.budget_steps), "sample.budget_steps",
          f"steps must be <= the number of pixels ({data.num_tokens})")
  for kind in TITLES:
    experiment_helpers.check_specs(build.build(kind, c.ar, data, c.dtype), c.sample.runs[kind],
                                   f"sample.runs.{kind}", guidance=Guidance(c.sample.guidance))


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  L = data.num_tokens
  x_test, y_test = to_tokens(data.x_test), data.y_test
  quality = SampleQuality.for_experiment(c, workdir, data)
  n = c.sample.num_samples
  key = jax.random.key(c.seed)
  null = np.full((n,), data.num_classes, np.int32)
  labels = np.arange(n) % data.num_classes
  per = np.arange(10 * data.num_classes) // 10  # per-class grid: a row of 10 per class
  guidance = Guidance(c.sample.guidance)
  rows = [{"model": "data (train split)", "NFE": 0, "fd": quality.floor(n),
           "accuracy": quality.test_accuracy()}]
  models, per_class = {}, []
  for kind in TITLES:
    process, params = model_cache.train_model(kind, c, workdir, data, c.ar, c.train)
    models[kind] = (process, params)
    # exact for raster AR (key unused); the ARDM bound along one random order per image
    test_bpd = held_out.test_bpd(process, params, x_test, y_test, key)
    for spec in map(parse_spec, c.sample.runs[kind]):
      row = {"model": f"{TITLES[kind]}, {spec}", "NFE": process.nfe(spec), "test_bpd": test_bpd}
      process.sample(params, key, null, spec)  # compile outside the timed block
      with experiment_helpers.timed(row):
        uncond = np.asarray(experiment_helpers.block(process.sample(params, key, null, spec)))
      cond = np.asarray(process.sample(params, key, labels, spec, guidance=guidance))
      row.update(fd=quality.frechet(uncond), accuracy=quality.accuracy(cond, labels))
      rows.append(row)
    spec = parse_spec(c.sample.runs[kind][0])
    plots.image_grid(uncond[:100], os.path.join(workdir, f"samples_{kind}.png"), nrow=10,
                     title=f"{TITLES[kind]}, unconditional ({spec})", vmax=data.num_levels - 1,
                     close=True)
    per_class.append(np.asarray(process.sample(params, key, per, spec, guidance=guidance))
                     .reshape(data.num_classes, 10, *data.shape))
  both = np.concatenate(per_class, axis=1)
  plots.image_grid(both.reshape(-1, *data.shape), os.path.join(workdir, "per_class.png"),
                   nrow=10 * len(per_class), row_labels=[str(i) for i in range(data.num_classes)],
                   vmax=data.num_levels - 1, close=True,
                   title=f"Per class (guidance w={c.sample.guidance:g}): "
                         + " | ".join(TITLES[k] for k in TITLES))

  # Step budgets: the bound of parallel decoding with S steps, uniform vs dynamic programming.
  ardm, ardm_params = models["ardm"]
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
                  title="ARDM parallel decoding: step budgets", close=True)

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
