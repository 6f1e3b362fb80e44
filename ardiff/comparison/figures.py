"""The comparison's line figures: FD, precision and recall panels, and training curves."""

from __future__ import annotations

import os

import numpy as np

from ardiff.comparison.scoring import METRICS
from ardiff.report import plots
from ardiff.train.progress import last_quarter_gain, validation_curve


def metric_panels(path, series, x_key, floors, styles, *, xlabel, title) -> None:
  """FD, precision and recall side by side, error bars = std over training seeds."""
  plots.line_panels(
      [plots.Panel([(name, [r[x_key] for r in rs], [r[metric] for r in rs],
                     [r[f"{metric}_std"] for r in rs]) for name, rs in series.items()],
                   ylabel, logy=logy, hlines=[("floor: train images vs test", floors[metric])])
       for metric, ylabel, logy in METRICS],
      path, xlabel=xlabel, title=title, logx=True, styles=styles, close=True)


def training_curves(c, workdir, families, models, per_step) -> dict:
  """training_curves.png: each family's validation loss against training compute (one line per
  training seed, a dot at its best: the EMA kept); returns {family name: last-quarter gains
  per seed}."""
  panels, gains = [], {}
  for family in families:
    curves = [validation_curve(m.directory) for m in models[family.name]]
    gains[family.name] = [last_quarter_gain(steps, losses) for steps, losses in curves]
    tflop = [steps * per_step[family.name] / 1e12 for steps, _ in curves]
    panels.append(plots.Panel(
        [(f"seed {seed}", x, losses) for seed, x, (_, losses) in
         zip(c.training_seeds, tflop, curves)], title=family.label,
        ylabel="validation loss (EMA; own units)" if not panels else "",
        marks=[(x[np.argmin(losses)], losses.min()) for x, (_, losses) in zip(tflop, curves)
               if len(losses)]))
  plots.line_panels(panels, os.path.join(workdir, "training_curves.png"),
                    xlabel="training compute (TFLOP)", panel_size=(3.4, 3.2), close=True,
                    styles={f"seed {s}": {"marker": "", "lw": 1.2} for s in c.training_seeds},
                    title="Validation loss against training compute (dot: the best, the EMA "
                          "kept)")
  return gains
