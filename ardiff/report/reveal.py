"""One sample being generated, step by step, by several removal processes side by side: the
project's central story as a picture.

Every process's `sample_history` is already a row of frames: the state after each step in data
space (levels as floats). Token processes reveal whole pixels (NaN where a pixel is not revealed
yet, drawn in `HIDDEN`, orange); Gaussian diffusion changes every pixel at every step (its
noisy state x_t, on the same grey scale).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch

from ardiff.report.plots import save_figure

HIDDEN = "#f28e2b"


def history_frames(process, params, key, labels, spec, frames: int) -> np.ndarray:
  """A row of `reveal_figure`: the first example of `process.sample_history` (the state after
  each step, [S, H, W(, 1)]); a process that takes S > frames steps (raster AR, one per pixel)
  shows every (S / frames)-th of them, ending at its last: steps floor(i S / frames) - 1
  for i = 1..frames."""
  history = np.asarray(process.sample_history(params, key, labels, spec))[:, 0]
  if len(history) > frames:
    history = history[np.linspace(0, len(history), frames + 1).astype(int)[1:] - 1]
  return history


def reveal_figure(rows: Sequence[tuple[str, np.ndarray]], path: str, *, vmax: float,
                  title: str, column_labels: Sequence[str] | None = None) -> None:
  """rows: (label, frames [S, H, W(, 1)] with NaN where hidden), every row with the same S."""
  rows = [(label, np.asarray(frames, np.float32)) for label, frames in rows]
  rows = [(label, frames[..., 0] if frames.ndim == 4 else frames) for label, frames in rows]
  steps = {len(frames) for _, frames in rows}
  if len(steps) != 1:
    raise ValueError(f"every row needs the same number of frames, got {sorted(steps)}")
  (num,) = steps
  cmap = plt.get_cmap("gray_r").with_extremes(bad=HIDDEN)
  label_in = 0.07 * max(len(label) for label, _ in rows)
  cell = 0.85
  fig, axes = plt.subplots(len(rows), num, squeeze=False,
                           figsize=(label_in + cell * num + 0.3, cell * len(rows) + 1.1))
  for r, (label, frames) in enumerate(rows):
    for s in range(num):
      ax = axes[r, s]
      ax.imshow(np.ma.masked_invalid(frames[s]), cmap=cmap, vmin=0, vmax=vmax,
                interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      if s == 0:
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
      if r == 0 and column_labels is not None:
        ax.set_title(column_labels[s], fontsize=9)
  fig.legend(handles=[Patch(color=HIDDEN, label="not revealed yet")], loc="lower center",
             ncol=1, fontsize=9, frameon=False)
  fig.suptitle(title, fontsize=11)
  fig.subplots_adjust(left=label_in / (label_in + cell * num + 0.3), right=0.99, wspace=0.05,
                      hspace=0.08, bottom=0.35 / (cell * len(rows) + 1.1),
                      top=1 - 0.75 / (cell * len(rows) + 1.1))
  save_figure(fig, path, bbox_inches="tight", pad_inches=0.15)
  plt.close(fig)
