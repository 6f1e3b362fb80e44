"""Results tables: markdown formatting and the .md / .csv pair write_results leaves in a work dir."""

from __future__ import annotations

import csv
import math

from ardiff.report import markdown_table, write_results


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
