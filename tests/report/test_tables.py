"""Results tables: markdown formatting and the .md / .csv pair write_results leaves in a work dir."""

from __future__ import annotations

import csv
import math

import numpy as np

from ardiff.report import markdown_table, write_results
from ardiff.report.tables import format_mean_std, mean_std, pareto_front


def test_markdown_table_formats_numbers_and_missing_cells():
  text = markdown_table([{"a": 1, "b": 0.123456}, {"a": "x", "b": 12345.0, "c": math.nan}],
                        ["a", "b", "c"])
  assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | 0.1235 |  |",
                               "| x | 1.23e+04 | nan |"]
  assert markdown_table([]) == "(no rows)\n"


def test_write_results_writes_markdown_and_csv_with_every_column(tmp_path):
  rows = [{"model": "ar", "bpd": 1.5}, {"model": "diffusion", "fd": 0.25}]
  md = write_results(str(tmp_path), rows, "Title", notes="Some notes.")
  assert md == str(tmp_path / "results.md")
  assert open(md).read() == ("# Title\n\nSome notes.\n\n| model | bpd | fd |\n|---|---|---|\n"
                             "| ar | 1.5 |  |\n| diffusion |  | 0.25 |\n")
  with open(tmp_path / "results.csv", newline="") as f:
    assert list(csv.DictReader(f)) == [{"model": "ar", "bpd": "1.5", "fd": ""},
                                       {"model": "diffusion", "bpd": "", "fd": "0.25"}]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.md"]


def test_pareto_front_against_brute_force():
  """Kept: a point iff no other is at least as good in both cost and loss and better in one
  (the definition, by brute force, on random points with repeated costs and losses)."""
  rng = np.random.default_rng(0)
  for _ in range(50):
    costs = rng.integers(1, 8, 12).astype(float)
    losses = rng.random(12).round(2)
    front = pareto_front(costs, losses)
    pts = list(zip(costs, losses))
    brute = sorted({(c, l) for c, l in pts if not any(
        c2 <= c and l2 <= l and (c2, l2) != (c, l) for c2, l2 in pts)})
    assert front == brute, (costs, losses)
  assert pareto_front([4, 1, 2, 8], [1.0, 5.0, 3.0, 2.0]) == [(1, 5.0), (2, 3.0), (4, 1.0)]


def test_mean_std_is_the_seeds_spread_and_formats_as_one_cell():
  assert mean_std([1.0, 2.0, 4.0]) == (7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                         + (4 - 7 / 3) ** 2) / 3))
  assert mean_std([5]) == (5.0, 0.0)
  assert format_mean_std([2.333333, 2.358023]) == "2.346 ± 0.012"
  assert format_mean_std([float("nan"), 1.0]) == "nan"
  assert format_mean_std([float("inf"), 1.0]) == "nan"
