"""The comparison's rows: quality against NFE, the models' training record, quality against
training compute. Every metric is a mean ± std over training seeds (`scoring.add_mean_std`)."""

from __future__ import annotations

import jax
import numpy as np

from ardiff.comparison import scoring
from ardiff.comparison.budget import learning_rate
from ardiff.comparison.labels import best_label, method
from ardiff.processes.spec import parse_spec
from ardiff.report.tables import format_mean_std
from ardiff.train import num_params, snapshot_params

TRAINING_NOTE = (
    "Each model's own train step costed by XLA; budget steps = budget / that cost. "
    "'stopped at': the early-stopping step per training seed ('budget': the budget "
    "ran out first, i.e. still improving). 'val gain, last quarter': how much the "
    "validation loss fell over the last quarter of the steps, as a fraction of its "
    "value at three quarters (0 = converged). Test bits per pixel: each process's "
    "nll_bound, exact for raster AR, the ARDM and upscale bounds (one random order "
    "per image), the diffusion variational bound (32 timesteps per image); mean ± "
    "std over training seeds.")
COMPUTE_NOTE = ("Each family's best compute spec at each budget (mean ± std over training "
                "seeds); the model at a budget is the best-validation EMA within it.")


def quality_vs_nfe(c, families, models, sample, quality, labels):
  """(rows, grids): one row per family x `sample.runs` spec (method, spec, NFE, metrics,
  seeds), each spec sampled once per training seed (key 1000 + seed index); grids: per series
  the seed-0 images at the NFE nearest 8."""
  rows, grids = [], {}
  for family in families:
    trained = models[family.name]
    for text in c.sample.runs[family.name]:
      spec = parse_spec(text)
      scores = []
      for i, model in enumerate(trained):
        images = sample(model, model.params, text, jax.random.key(1000 + i), labels)
        scores.append(scoring.score(quality, images))
        if i == 0:
          scoring.keep_grid(grids, method(family, spec), model.process.nfe(spec), images)
      row = {"method": method(family, spec), "spec": text, "NFE": model.process.nfe(spec)}
      scoring.add_mean_std(row, scores)
      row["seeds"] = len(scores)
      rows.append(row)
  return rows, grids


def by_key(rows, key: str) -> dict:
  """{row[key]: the rows with it, in order}, in order of first appearance: a figure's series."""
  series = {}
  for row in rows:
    series.setdefault(row[key], []).append(row)
  return series


def nfe_series(rows, families) -> dict:
  """{series name: rows} for the quality-vs-NFE figure: each Gaussian family's solvers give
  way to one series, its best solver at each NFE (`scoring.best_per_nfe`)."""
  series = by_key(rows, "method")
  gaussian = [f for f in families if f.gaussian]
  for family in gaussian:
    series[best_label(family)] = scoring.best_per_nfe(
        [r for r in rows if r["method"].startswith(family.label + " ")])
  return {name: rs for name, rs in series.items()
          if not any(name.startswith(f.label + " ") for f in gaussian)}


def training_row(c, family, trained, per_step: float, budget: float, gains, bits) -> dict:
  """The training table's row of one family: its budget, convergence and held-out bits."""
  stops = [m.info.get("stopped_early_at") for m in trained]
  return {
      "model": family.label, "kind": family.kind, "params": num_params(trained[0].params),
      "GFLOP/step": per_step / 1e9,
      "budget PFLOP": budget / 1e15,
      "budget steps": trained[0].info["steps"],
      "lr": learning_rate(c, family),
      "stopped at": ", ".join("budget" if s is None else str(s) for s in stops),
      "best step": ", ".join(str(m.info.get("best_step")) for m in trained),
      "val loss": format_mean_std([m.info.get("best_val", np.nan) for m in trained]),
      "val gain, last quarter": format_mean_std(gains),
      "test bits/pixel": format_mean_std(bits),
      "train minutes": format_mean_std([m.info["wall_seconds"] / 60 for m in trained])}


def quality_vs_compute(c, families, models, budget, sample, quality, labels) -> list[dict]:
  """Rows (model, TFLOP, best compute spec, metrics): each family's best `compute_specs` entry
  (lowest mean FD) at each budget snapshot and at the end; [] without snapshots."""
  fractions = sorted(c.train.snapshots) + [1.0]
  if len(fractions) < 2:
    return []
  rows = []
  for family in families:
    trained = models[family.name]
    steps = trained[0].info["steps"]
    per_fraction = {}
    for i, model in enumerate(trained):
      snaps = snapshot_params(model.directory, model.params)
      stop = model.info.get("stopped_early_at")
      for f in fractions:
        step = max(1, round(f * steps))
        if f == 1.0 or stop is not None and stop <= step:
          params = model.params
        else:  # the snapshot saved nearest f of the steps (a run extended after its snapshots
          # were taken, e.g. when XLA's count of its step fell, has them at the old fractions)
          params = snaps[min(snaps, key=lambda s: abs(s - step))]
        for text in c.compute_specs[family.name]:
          images = sample(model, params, text, jax.random.key(2000 + i), labels)
          per_fraction.setdefault((f, text), []).append(scoring.score(quality, images))
    for f in fractions:
      best = min(c.compute_specs[family.name],
                 key=lambda t: np.mean([s["fd"] for s in per_fraction[(f, t)]]))
      rows.append(scoring.add_mean_std(
          {"model": family.label, "TFLOP": f * budget / 1e12, "spec": best},
          per_fraction[(f, best)]))
  return rows
