"""Figures: every helper returns its Figure, writes a PNG only when given a path, closes on request;
importing the module chooses no backend."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from ardiff.report import plots

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_rng = np.random.default_rng(0)
_GRID = np.stack(np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)), -1).reshape(-1, 2)
CALLS = {
    "scatter_panels": lambda path, **kw: plots.scatter_panels(
        [("a", _rng.normal(size=(50, 2)), None)], path, data=_rng.normal(size=(30, 2)),
        title="t", **kw),
    "quiver_panels": lambda path, **kw: plots.quiver_panels(
        [("f", _GRID, _rng.normal(size=_GRID.shape))], path, **kw),
    "image_grid": lambda path, **kw: plots.image_grid(
        _rng.integers(0, 17, size=(6, 8, 8, 1)), path, row_labels=["r0", "r1"], **kw),
    "line_plot": lambda path, **kw: plots.line_plot(
        [("s", [1, 2, 3], [3.0, 1.0, 2.0])], path, xlabel="x", ylabel="y", hlines=[("h", 2.0)],
        **kw),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_returns_figure_and_writes_only_when_given_a_path(name, tmp_path):
  before = set(plt.get_fignums())
  fig = CALLS[name](None)
  assert isinstance(fig, Figure) and fig.axes
  assert plt.fignum_exists(fig.number)  # open: a notebook shows it, the caller may edit it
  assert list(tmp_path.iterdir()) == []
  plt.close(fig)

  path = tmp_path / f"{name}.png"
  saved = CALLS[name](str(path))
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert plt.fignum_exists(saved.number)
  plt.close(saved)

  closed = CALLS[name](str(tmp_path / "closed.png"), close=True)
  assert isinstance(closed, Figure) and (tmp_path / "closed.png").exists()
  assert set(plt.get_fignums()) == before  # close=True leaves nothing open


def test_import_chooses_no_backend_and_tables_do_not_import_matplotlib(tmp_path):
  code = ("import sys, matplotlib as mpl\n"
          "from ardiff.report import write_results\n"
          "assert 'matplotlib.pyplot' not in sys.modules\n"
          "from ardiff.report import plots\n"
          "print(mpl.rcParams._get_backend_or_none())\n"
          "plots.line_plot([('s', [0, 1], [0, 1])], xlabel='x', ylabel='y', close=True)\n"
          "print(mpl.get_backend().lower())\n")
  # Headless, and no user matplotlibrc that could name a backend.
  env = {k: v for k, v in os.environ.items()
         if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY", "MATPLOTLIBRC")}
  env["MPLCONFIGDIR"] = str(tmp_path)
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  # Nothing forced at import; headless, matplotlib's own resolution then picks Agg.
  assert out == ["None", "agg"]
