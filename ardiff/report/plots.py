"""Figures. Every function takes arrays, builds one matplotlib Figure and returns it.

Given ``path``, a function also writes the figure there as a PNG (110 dpi). The figure is a
pyplot figure, so a notebook shows it at the end of the cell like any other (assign it,
``fig = plots.line_plot(...)``, to keep a handle), and it stays open, i.e. registered with
pyplot, until closed.
Scripts that only want the file pass ``close=True`` (or call ``plt.close(fig)``): pyplot keeps
every open figure alive, and warns beyond 20. A closed figure is still a whole Figure (it can
be saved again); it is just no longer managed by pyplot, so ``plt.show()`` skips it.

The backend is not chosen here: matplotlib's default resolution picks an interactive backend
where there is a display, Agg on a headless machine (with MPLBACKEND unset), and the notebook's
own backend in Jupyter. Set MPLBACKEND=Agg to force files-only plotting on a machine with a
display.
"""

from __future__ import annotations

import dataclasses
import io
import textwrap

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ardiff import console, storage
from ardiff.report.tiles import tile_images

ARM_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
LIMITS = (-1.35, 1.35)  # the spiral's square; other point data gets limits from its range


def arm_colors(labels: np.ndarray) -> np.ndarray:
  """One colour per class id (cycling when there are more classes than colours)."""
  return np.array(ARM_COLORS)[np.asarray(labels) % len(ARM_COLORS)]


def point_limits(data: np.ndarray | None) -> tuple[float, float]:
  """A square view: the spiral's LIMITS when the data fits in it, else the data's 0.5-99.5
  percentile range padded by 15% (so a diverged sampler does not squash the axes)."""
  if data is None:
    return LIMITS
  lo, hi = np.percentile(np.asarray(data), [0.5, 99.5])
  if LIMITS[0] <= lo and hi <= LIMITS[1]:
    return LIMITS
  pad = 0.15 * (hi - lo)
  return (float(lo - pad), float(hi + pad))


def _finish(fig: Figure, path: str | None, title: str | None, close: bool) -> Figure:
  """Title and lay out the figure; write it to `path` if given; close it if asked; return it."""
  if title:
    # Wrapped to the figure's width (13 pt: ~0.1 inch per character), never cut at its edges.
    per_line = max(20, int(fig.get_figwidth() * 10))
    fig.suptitle(textwrap.fill(title, per_line), fontsize=13)
  fig.tight_layout()
  if path is not None:
    save_figure(fig, path, bbox_inches="tight", pad_inches=0.15)
  if close:
    plt.close(fig)
  return fig


def save_figure(fig: Figure, path: str, dpi: int = 110, **savefig_kw) -> None:
  """fig as a PNG at `path` (a local file or a bucket object, written whole), on process 0
  only: one writer per multi-host job."""
  if not console.is_chief():
    return
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi, **savefig_kw)
  storage.write_atomic(path, buffer.getvalue())


def _points_axis(ax, title: str, limits=LIMITS):
  ax.set_title(title, fontsize=10)
  ax.set_xlim(*limits)
  ax.set_ylim(*limits)
  ax.set_aspect("equal")
  ax.set_xticks([])
  ax.set_yticks([])


def scatter_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
                   path: str | None = None, data: np.ndarray | None = None,
                   title: str | None = None, ncols: int | None = None, *,
                   close: bool = False) -> Figure:
  """One scatter panel per (title, points, colours-or-None); `data` drawn faintly behind."""
  n = len(panels)
  ncols = ncols or n
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 3.1 * nrows), squeeze=False)
  for ax in axes.flat[n:]:
    ax.axis("off")
  limits = point_limits(data)
  far = 8 * max(abs(limits[0]), abs(limits[1]))
  for ax, (name, pts, colors) in zip(axes.flat, panels):
    if data is not None:
      ax.scatter(data[:, 0], data[:, 1], s=2, c="#cccccc", lw=0)
    pts = np.asarray(pts)
    inside = np.all(np.abs(pts) < far, axis=1)  # a diverged sampler would squash the axes
    c = "#222222" if colors is None else np.asarray(colors)[inside]
    ax.scatter(pts[inside, 0], pts[inside, 1], s=2.5, c=c, lw=0, alpha=0.8)
    _points_axis(ax, name, limits)
  return _finish(fig, path, title, close)


def quiver_panels(panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
                  path: str | None = None, data: np.ndarray | None = None,
                  title: str | None = None, *, close: bool = False) -> Figure:
  """Vector fields: (title, grid points [N, 2], vectors [N, 2]) per panel.

  Arrows show direction at a fixed length (the grid spacing) and colour shows magnitude, so
  long vectors far from the data do not hide the structure near it."""
  n = len(panels)
  fig, axes = plt.subplots(1, n, figsize=(3.3 * n, 3.6), squeeze=False)
  for ax, (name, grid, vec) in zip(axes.flat, panels):
    if data is not None:
      ax.scatter(data[:, 0], data[:, 1], s=2, c="#f4a582", lw=0, alpha=0.7)
    mag = np.linalg.norm(vec, axis=1)
    spacing = np.min(np.diff(np.unique(grid[:, 0])))
    unit = vec / np.maximum(mag, 1e-9)[:, None] * 0.8 * spacing
    q = ax.quiver(grid[:, 0], grid[:, 1], unit[:, 0], unit[:, 1], mag, cmap="viridis",
                  angles="xy", scale_units="xy", scale=1.0, width=0.006, clim=(0, mag.max()))
    fig.colorbar(q, ax=ax, orientation="horizontal", fraction=0.05, pad=0.02,
                 label="|x̂0 − x|")
    _points_axis(ax, name, point_limits(data))
  return _finish(fig, path, title, close)


def image_grid(images: np.ndarray, path: str | None = None, nrow: int | None = None,
               title: str | None = None, row_labels: Sequence[str] | None = None,
               vmax: float | None = None, *, close: bool = False) -> Figure:
  """A grid of [N, H, W, C] images (levels or floats); rows optionally labelled."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  ncol = -(-n // nrow)
  vmax = float(images.max()) if vmax is None else vmax
  vmin = float(min(images.min(), 0.0))
  canvas = tile_images(images, nrow, fill=vmin)
  # Each image ~0.42 inch per 8 pixels (at most 0.9 inch), plus room for the row labels (9 pt:
  # ~0.075 inch per character), so the images, not the margins, fill the figure.
  cell = min(0.9, 0.42 * max(h, w) / 8)
  labels_in = 0.075 * max((len(s) for s in row_labels), default=0) if row_labels else 0.0
  fig, ax = plt.subplots(figsize=(max(3.0, nrow * cell * w / max(h, w) + labels_in + 0.4),
                                  max(1.5, ncol * cell * h / max(h, w) + 0.5)))
  shown = canvas[..., 0] if c == 1 else np.clip((canvas - vmin) / max(vmax - vmin, 1e-9), 0, 1)
  ax.imshow(shown, cmap="gray_r" if c == 1 else None, vmin=vmin, vmax=vmax,
            interpolation="nearest")
  ax.set_xticks([])
  if row_labels:
    ax.set_yticks([1 + r * (h + 1) + h / 2 for r in range(len(row_labels))])
    ax.set_yticklabels(row_labels, fontsize=9)
  else:
    ax.set_yticks([])
  return _finish(fig, path, title, close)


Series = (tuple[str, Sequence[float], Sequence[float]]
          | tuple[str, Sequence[float], Sequence[float], Sequence[float] | None])


def _lower_errors(ys: np.ndarray, yerr: np.ndarray, logy: bool) -> np.ndarray:
  """The downward bar lengths: yerr, except on a log axis, where a bar may not reach 0 or below
  (it would be dropped or stretch the axis to tiny values): at most 0.999 * y there."""
  return np.minimum(yerr, np.maximum(0.999 * ys, 0.0)) if logy else yerr


def line_plot(series: Sequence[Series], path: str | None = None, *, xlabel: str, ylabel: str,
              title: str | None = None, logx: bool = False, logy: bool = False,
              hlines: Sequence[tuple[str, float]] = (), styles: dict[str, dict] | None = None,
              close: bool = False) -> Figure:
  """Lines of (label, xs, ys) or (label, xs, ys, yerr); optional horizontal reference lines
  (label, y).

  yerr (one non-negative half-width per point, or None for no bars) is drawn as symmetric error
  bars with caps, in the line's style (``styles[label]``, e.g. colour). On a log y axis the
  lower bar is clipped to end just above zero (at 0.001 * y), so it stays drawable; the upper
  bar is kept. Such a clipped bar pulls the axis down to 0.001 * y (three decades): read it as
  "the spread reaches zero".
  """
  fig, ax = plt.subplots(figsize=(7.0, 4.6))
  _draw_panel(ax, Panel(series, ylabel, logy=logy, hlines=hlines), xlabel, logx, styles,
              legend=True)
  return _finish(fig, path, title, close)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One axes of `line_panels`: its lines (as `line_plot` takes them) and their y axis."""

  series: Sequence[Series]
  ylabel: str = ""
  title: str | None = None
  logy: bool = False
  hlines: Sequence[tuple[str, float]] = ()  # (label, y): dashed grey reference lines
  marks: Sequence[tuple[float, float]] = ()  # (x, y): black dots, e.g. each line's best point


def line_panels(panels: Sequence[Panel], path: str | None = None, *, xlabel: str,
                title: str | None = None, logx: bool = False,
                styles: dict[str, dict] | None = None, panel_size=(5.7, 4.8),
                close: bool = False) -> Figure:
  """`line_plot`s side by side on one x quantity (e.g. FD, precision and recall against NFE),
  one per `Panel`; the legend on the first panel only (the panels share their series)."""
  fig, axes = plt.subplots(1, len(panels), squeeze=False,
                           figsize=(panel_size[0] * len(panels), panel_size[1]))
  for i, (ax, panel) in enumerate(zip(axes[0], panels)):
    _draw_panel(ax, panel, xlabel, logx, styles, legend=i == 0)
  return _finish(fig, path, title, close)


def _draw_panel(ax, panel: Panel, xlabel: str, logx: bool, styles: dict[str, dict] | None,
                legend: bool) -> None:
  handles = []  # the legend in series order (matplotlib's own puts error bars last)
  for i, entry in enumerate(panel.series):
    if len(entry) not in (3, 4):
      raise ValueError(f"series[{i}] must be (label, xs, ys) or (label, xs, ys, yerr), "
                       f"got {len(entry)} elements")
    label, xs, ys = entry[:3]
    yerr = entry[3] if len(entry) == 4 else None
    style = {"marker": "o", "ms": 4, **(styles or {}).get(label, {})}
    if yerr is None:
      handles += ax.plot(xs, ys, label=label, **style)
      continue
    ys, yerr = np.asarray(ys, np.float64), np.asarray(yerr, np.float64)
    if yerr.shape != ys.shape:
      raise ValueError(f"yerr of series {label!r} must have the shape of its ys {ys.shape}, "
                       f"got {yerr.shape}")
    if np.any(yerr < 0):
      raise ValueError(f"yerr of series {label!r} must be non-negative")
    handles.append(ax.errorbar(xs, ys, yerr=np.stack([_lower_errors(ys, yerr, panel.logy),
                                                      yerr]),
                               label=label, capsize=3, elinewidth=1, **style))
  for x, y in panel.marks:
    ax.plot(x, y, "k.", ms=5)
  for label, y in panel.hlines:
    ax.axhline(y, ls="--", c="gray", lw=1)
    ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="gray",
                va="bottom")
  if logx:
    ax.set_xscale("log")
  if panel.logy:
    ax.set_yscale("log")
  if panel.title:
    ax.set_title(panel.title, fontsize=10)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(panel.ylabel)
  ax.grid(alpha=0.3, which="both")
  shown = [h for h in handles if h.get_label() and not str(h.get_label()).startswith("_")]
  if legend and shown:
    ax.legend(handles=shown, fontsize=8)
