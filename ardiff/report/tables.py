"""Results tables (markdown + CSV) and the work-dir files every experiment writes."""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Any, Sequence

import numpy as np

from ardiff import console, storage


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    if math.isnan(v):
      return "nan"
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
      return f"{v:.3g}"
    return f"{v:.4g}"
  return str(v)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """(mean, std) of per-seed values: sum v / n and sqrt(sum (v - mean)^2 / n) (the spread of
  the seeds themselves, not an error of the mean)."""
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std())


def format_mean_std(values: Sequence[float]) -> str:
  """A table cell 'mean ± std' of per-seed values (`mean_std`; 4 and 2 significant digits),
  'nan' if the mean is not finite."""
  mean, std = mean_std(values)
  return "nan" if not np.isfinite(mean) else f"{mean:.4g} ± {std:.2g}"


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
  if not rows:
    return "(no rows)\n"
  columns = list(columns or rows[0].keys())
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def write_results(workdir: str, rows: Sequence[dict[str, Any]], title: str,
                  notes: str = "", name: str = "results") -> str:
  """Write `name`.md (title, notes, table) and `name`.csv; returns the markdown path.
  On a multi-host job only process 0 writes (the others return the path)."""
  columns: list[str] = []
  for r in rows:
    columns += [k for k in r if k not in columns]
  md_path = os.path.join(workdir, f"{name}.md")
  if not console.is_chief():
    return md_path
  head = f"# {title}\n\n{notes.strip()}\n\n" if notes else f"# {title}\n\n"
  storage.write_atomic(md_path, head + markdown_table(rows, columns))
  table = io.StringIO(newline="")
  writer = csv.DictWriter(table, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  storage.write_atomic(os.path.join(workdir, f"{name}.csv"), table.getvalue())
  return md_path


def pareto_front(costs: Sequence[float], losses: Sequence[float]) -> list[tuple[float, float]]:
  """The (cost, loss) points no other point beats with at most the same cost, sorted by cost:
  the best result available at each budget (ties in cost keep the lower loss)."""
  points = sorted(zip(costs, losses), key=lambda p: (p[0], p[1]))
  front: list[tuple[float, float]] = []
  for cost, loss in points:
    if not front or loss < front[-1][1]:
      if front and front[-1][0] == cost:
        continue  # same cost, a higher loss than the one kept (sorted by loss within a cost)
      front.append((cost, loss))
  return front
