"""How far training got, read off a run's validation curve (its `metrics.jsonl`)."""

from __future__ import annotations

import os

import numpy as np

from ardiff.train.records import read_metrics


def validation_curve(workdir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """(steps, validation losses) of a run: its logged rows that carry `val/loss`, in order."""
  rows = [r for r in read_metrics(workdir) if "val/loss" in r]
  return (np.array([r["step"] for r in rows], float), np.array([r["val/loss"] for r in rows]))


def last_quarter_gain(steps: np.ndarray, losses: np.ndarray) -> float:
  """How much the validation loss fell in the last quarter of training, as a fraction of the
  loss at three quarters (0: flat, i.e. converged; > 0: still improving):

      gain = (l(3 S / 4) - min_s l(s)) / |l(3 S / 4)|,

  with S the last step and l(3 S / 4) interpolated linearly between the logged steps; nan with
  fewer than two points."""
  if len(steps) < 2:
    return float("nan")
  at_three_quarters = np.interp(0.75 * steps[-1], steps, losses)
  return float((at_three_quarters - losses.min()) / abs(at_three_quarters))
