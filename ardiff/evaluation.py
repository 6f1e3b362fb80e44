"""What `ardiff eval` reports: one set of samples scored against the held-out split by the
experiments' own metrics, each beside its floor (the same metric of as many real examples,
since every one of them is biased by the number of samples).

  points  `metrics.points.point_metrics` (sliced W1, MMD, distance to the nearest held-out
          point, spread, finite share), as the spiral's results table; floor: the first n
          training points, its "held-out data (reference)" row
  images  Fréchet distance, k-NN precision and recall in the digit classifier's features
          (`comparison.scoring.score`, `SampleQuality`); floors: n training images
          (`scoring.floors`), as the comparison's table and figure
  bits    held-out bits per dimension, unconditional, where the process has a likelihood
          (`nll_bound`) of image data (`scoring.held_out_bits`); no floor

A row is (metric, value, floor or None).
"""

from __future__ import annotations

import numpy as np

from ardiff.comparison import scoring
from ardiff.metrics.points import point_metrics

Row = tuple[str, float, "float | None"]


def point_rows(samples: np.ndarray, data) -> list[Row]:
  """The spiral's metrics of the samples and of the first n training points."""
  got = point_metrics(samples, data.x_test)
  floor = point_metrics(data.x_train[:len(samples)], data.x_test)
  return [(name, got[name], floor[name]) for name in got]


def image_rows(samples: np.ndarray, quality) -> list[Row]:
  """FD, precision and recall of the samples, with the floors for as many images."""
  got, floor = scoring.score(quality, samples), scoring.floors(quality, len(samples))
  return [(name, got[name], floor[name]) for name, _, _ in scoring.METRICS]


def bits_row(kind: str, process, params, data, key) -> Row | None:
  """Held-out bits per dimension on the whole test split; None where there is no likelihood."""
  if data.kind != "image" or getattr(process, "nll_bound", None) is None:
    return None
  return ("bits per dim", scoring.held_out_bits(kind, process, params, data, key), None)


def table(rows: list[Row]) -> str:
  """Markdown: metric | model | floor (a dash where there is none)."""
  lines = ["| metric | model | floor |", "|---|---|---|"]
  lines += [f"| {name} | {value:.6g} | {'-' if floor is None else f'{floor:.6g}'} |"
            for name, value, floor in rows]
  return "\n".join(lines)
