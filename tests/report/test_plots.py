"""Figures: every helper returns its Figure, writes a PNG only when given a path, closes on request;
importing the module chooses no backend."""

from __future__ import annotations

import os
import subprocess
import sys

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
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
    "line_plot_errorbars": lambda path, **kw: plots.line_plot(
        [("s", [1, 2, 3], [3.0, 1.0, 2.0], [0.5, 2.0, 0.1]), ("t", [1, 3], [2.0, 2.5], None)],
        path, xlabel="x", ylabel="y", logy=True, **kw),
    "line_panels": lambda path, **kw: plots.line_panels(
        [plots.Panel([("s", [1, 2], [3.0, 1.0], [0.5, 0.1])], "a", logy=True),
         plots.Panel([("s", [1, 2], [0.2, 0.4])], "b", marks=[(2, 0.4)])], path, xlabel="x",
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


def _bar_segments(container: ErrorbarContainer) -> np.ndarray:
  """The vertical bars of an errorbar container as [N, 2 (ends), 2 (x, y)]."""
  (bars,) = container.lines[2]
  return np.array(bars.get_segments())


def test_line_plot_draws_error_bars_only_for_series_with_yerr():
  xs, ys, yerr = [1.0, 2.0, 4.0], [3.0, 1.0, 2.0], [0.5, 0.25, 1.0]
  fig = plots.line_plot(
      [("old", xs, [1.0, 2.0, 3.0]),  # the 3-tuple form: a plain line
       ("bars", xs, ys, yerr),
       ("none", xs, [2.0, 2.0, 2.0], None)],
      xlabel="x", ylabel="y", title="t", styles={"bars": {"c": "#d62728", "ls": "--"}},
      close=True)
  ax = fig.axes[0]
  bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
  assert len(bars) == 1 and bars[0].get_label() == "bars"
  seg = _bar_segments(bars[0])
  np.testing.assert_allclose(seg[:, :, 0], np.repeat(np.array(xs)[:, None], 2, 1))
  np.testing.assert_allclose(seg[:, 0, 1], np.subtract(ys, yerr))  # symmetric: y -/+ yerr
  np.testing.assert_allclose(seg[:, 1, 1], np.add(ys, yerr))
  assert len(bars[0].lines[1]) == 2  # caps above and below
  # The bars and the line share the series' style.
  data_line = bars[0].lines[0]
  assert data_line.get_linestyle() == "--"
  np.testing.assert_allclose(bars[0].lines[2][0].get_colors()[0], mcolors.to_rgba("#d62728"))
  np.testing.assert_allclose(data_line.get_ydata(), ys)
  # The plain lines keep their data; every series is in the legend, in order.
  plain = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
  assert sorted(plain) == ["none", "old"]
  np.testing.assert_allclose(plain["old"].get_ydata(), [1.0, 2.0, 3.0])
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ["old", "bars", "none"]
  assert ax.get_ylabel() == "y" and fig.texts[0].get_text() == "t"


def test_line_plot_log_axis_keeps_lower_bars_positive():
  ys, yerr = np.array([1.0, 10.0, 100.0]), np.array([2.0, 5.0, 1000.0])
  fig = plots.line_plot([("s", [1, 2, 3], ys, yerr)], xlabel="x", ylabel="y", logy=True,
                        close=True)
  seg = _bar_segments(fig.axes[0].containers[0])
  np.testing.assert_allclose(seg[:, 0, 1], [0.001, 5.0, 0.1])  # min(y - yerr, 0.001 y)
  np.testing.assert_allclose(seg[:, 1, 1], ys + yerr)  # upper bars untouched
  assert fig.axes[0].get_yscale() == "log"
  # On a linear axis the same bars go below zero, as asked.
  lin = plots.line_plot([("s", [1, 2, 3], ys, yerr)], xlabel="x", ylabel="y", close=True)
  np.testing.assert_allclose(_bar_segments(lin.axes[0].containers[0])[:, 0, 1], ys - yerr)


def test_line_plot_rejects_bad_series():
  with pytest.raises(ValueError, match=r"yerr of series 's' must have the shape of its ys \(3,\)"):
    plots.line_plot([("s", [1, 2, 3], [1.0, 2.0, 3.0], [0.1, 0.2])], xlabel="x", ylabel="y",
                    close=True)
  with pytest.raises(ValueError, match="yerr of series 's' must be non-negative"):
    plots.line_plot([("s", [1, 2], [1.0, 2.0], [0.1, -0.2])], xlabel="x", ylabel="y",
                    close=True)
  with pytest.raises(ValueError, match=r"series\[1\] must be \(label, xs, ys\)"):
    plots.line_plot([("a", [1], [1.0]), ("s", [1], [1.0], [0.1], "extra")], xlabel="x",
                    ylabel="y", close=True)


def test_line_panels_draw_each_panel_as_line_plot_with_the_legend_once():
  series = [("s", [1.0, 2.0, 4.0], [3.0, 1.0, 2.0], [0.5, 0.25, 1.0]),
            ("t", [1.0, 4.0], [2.0, 2.5])]
  fig = plots.line_panels(
      [plots.Panel(series, "fd", logy=True, hlines=[("floor", 0.5)]),
       plots.Panel(series[1:], "recall", title="r", marks=[(4.0, 2.5)])],
      xlabel="NFE", logx=True, title="t", styles={"t": {"c": "#d62728"}}, close=True)
  left, right = fig.axes
  alone = plots.line_plot(series, xlabel="NFE", ylabel="fd", logx=True, logy=True,
                          hlines=[("floor", 0.5)], styles={"t": {"c": "#d62728"}}, close=True)
  # The first panel is line_plot's axes: the same bars, lines, reference line and scales.
  np.testing.assert_allclose(_bar_segments(left.containers[0]),
                             _bar_segments(alone.axes[0].containers[0]))
  assert [np.asarray(ln.get_ydata()).tolist() for ln in left.get_lines()] == \
      [np.asarray(ln.get_ydata()).tolist() for ln in alone.axes[0].get_lines()]
  assert (left.get_xscale(), left.get_yscale(), right.get_yscale()) == ("log", "log", "linear")
  assert [t.get_text() for t in left.get_legend().get_texts()] == ["s", "t"]
  assert right.get_legend() is None and right.get_title() == "r"
  assert (left.get_ylabel(), right.get_ylabel(), right.get_xlabel()) == ("fd", "recall", "NFE")
  dots = [ln for ln in right.get_lines() if ln.get_marker() == "."]
  assert len(dots) == 1 and dots[0].get_xydata().tolist() == [[4.0, 2.5]]
  assert mcolors.to_hex(right.get_lines()[0].get_color()) == "#d62728"
