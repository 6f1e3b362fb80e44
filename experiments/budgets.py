"""ARDM parallel decoding: uniform step budgets vs budgets from dynamic programming.

  ardiff run experiments/budgets.py --workdir=runs/budgets

The order-agnostic model (shared with digits_ar.py) is decoded in S parallel steps. A uniform
budget reveals L/S pixels per step; the dynamic program (Hoogeboom et al. 2021) chooses the
step sizes that minimise the bound sum_s k_s L_{t_s}, given per-step losses L_t measured on
the train split; every budget is scored with L_t from the test split. Reports the bound (bits
per pixel) and sample quality (Fréchet distance) for both.
Writes budgets.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from ardiff import model_cache
from ardiff.configs import require, sized
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes.autoregressive.budget import budget_cost, resolve_dp
from ardiff.processes.autoregressive.evaluate import budget_losses
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results

SMOKE = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
         "num_samples=70", "steps=[1, 8]", "classifier_steps=20"]


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True)
  c.num_samples = 300 if scale == "small" else 2000
  c.steps = [1, 2, 3, 4, 6, 8, 12, 16, 32, 64]
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  validate_image_config(c)
  require(all(s >= 1 for s in c.steps), "steps", "each number of steps must be >= 1")
  require(c.num_samples >= 2, "num_samples", "must be >= 2")


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  L, n = data.num_tokens, c.num_samples
  require(all(s <= L for s in c.steps), "steps", f"each must be <= the {L} pixels")
  quality = SampleQuality.for_experiment(c, workdir, data)
  ardm, params = model_cache.train_model("ardm", c, workdir, data, c.ar, c.train)
  key = jax.random.key(c.seed)
  fit, losses = budget_losses(ardm, params, data, jax.random.fold_in(key, 7))
  to_bpd = 1.0 / (L * np.log(2.0))
  null = np.full((n,), data.num_classes, np.int32)
  rows, curves = [], {"uniform": ([], []), "dynamic programming": ([], [])}
  fds = {"uniform": [], "dynamic programming": []}
  for steps in c.steps:
    # The same number of steps two ways: k = ceil(L / S) per step, or the DP's sizes (fitted
    # on train-split losses, scored on test).
    uniform = parse_spec(f"ardm:k={-(-L // steps)}")
    dp = resolve_dp(f"ardm:dp={steps}", fit)
    for name, spec in (("uniform", uniform), ("dynamic programming", dp)):
      sizes = ardm.step_sizes(spec)
      x = np.asarray(ardm.sample(params, key, null, spec))
      bound = budget_cost(losses, sizes) * to_bpd
      fd = quality.frechet(x)
      curves[name][0].append(ardm.nfe(spec))
      curves[name][1].append(bound)
      fds[name].append(fd)
      rows.append({"budget": name, "steps": len(sizes), "bound_bpd": bound, "fd": fd,
                   "step_sizes": "-".join(map(str, sizes)) if len(sizes) <= 16 else "..."})
  plots.line_plot([(f"{name}: bound (bpd)", xs, ys) for name, (xs, ys) in curves.items()],
                  os.path.join(workdir, "budgets.png"), xlabel="parallel decoding steps (NFE)",
                  ylabel="bound on test NLL (bits per pixel)", logx=True,
                  hlines=[("one pixel per step", float(losses.sum() * to_bpd))],
                  title="ARDM step budgets: uniform vs dynamic programming", close=True)
  plots.line_plot([(f"{name}: FD", curves[name][0], fds[name]) for name in curves],
                  os.path.join(workdir, "budgets_fd.png"), xlabel="parallel decoding steps (NFE)",
                  ylabel="Fréchet distance (lower is better)", logx=True, logy=True,
                  hlines=[("floor: train split vs test", quality.floor(n))],
                  title="ARDM step budgets: sample quality", close=True)
  plots.line_plot([("L_t (nats)", list(range(L)), list(losses))],
                  os.path.join(workdir, "step_losses.png"), xlabel="pixels already revealed (t)",
                  ylabel="loss of one more pixel (nats)",
                  title="Per-step losses that the dynamic program uses", close=True)
  notes = (f"The ARDM transformer of digits_ar.py. The DP is fitted on per-step losses L_t "
           "measured on 512 train images; every bound is scored with L_t from the test split; "
           f"{n} unconditional samples per row (random order). bound_bpd = sum_s k_s L(t_s) "
           "/ (64 ln 2): the likelihood bound of decoding with these step sizes.")
  write_results(workdir, rows, "ARDM step budgets", notes)
  return rows
