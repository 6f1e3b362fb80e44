"""Every experiment file runs end to end at a tiny scale and writes its figures and table."""

import glob
import os

import pytest

from ardiff.cli import get_experiment_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))


def test_every_experiment_has_smoke_overrides():
  assert EXPERIMENTS
  for path in EXPERIMENTS:
    module, _ = get_experiment_config(path, [])
    assert getattr(module, "SMOKE_OVERRIDES", None), f"{path} defines no SMOKE_OVERRIDES"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[os.path.basename(p) for p in EXPERIMENTS])
def test_experiment_runs_at_tiny_scale(path, tmp_path):
  module, _ = get_experiment_config(path, [])
  _, config = get_experiment_config(path, list(module.SMOKE_OVERRIDES))
  module.run(config, str(tmp_path))
  pngs = glob.glob(str(tmp_path / "*.png"))
  assert pngs, "no figure written"
  for png in pngs:
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = (tmp_path / "results.md").read_text()
  assert table.count("\n|") >= 3  # header, separator, at least one row
  assert (tmp_path / "results.csv").exists()


@pytest.mark.parametrize("what", ["diffusion", "train"])
def test_bench_quick_prints_a_table(what, capsys):
  from ardiff import bench

  text = bench.run(what, quick=True)
  assert "| " in text and "Device:" in text
  rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
  assert len(rows) >= 2  # header and at least one measured row
