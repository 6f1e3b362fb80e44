"""The guidance figures of experiments/digits_diffusion.py: class-conditional samples in blocks
(one row per class, one block of samples per guidance weight), and classifier-free against
classifier guidance, accuracy and FD against the weight w."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ardiff.report import plots


def by_class(x, labels, num_classes, per_class):
  """The first per_class samples of each class: [num_classes, per_class, ...]."""
  return np.stack([x[labels == k][:per_class] for k in range(num_classes)])


def guidance_compare_figure(cfg_curve, cg_curve, path, *, spec_label, num_samples,
                            data_accuracy, fd_floor):
  """Two panels against the guidance weight w: class accuracy and FD, one line per kind of
  guidance; curves are [(w, accuracy, fd)]."""
  fig, axes = plt.subplots(1, 2, figsize=(11.0, 4.6))
  kinds = [("classifier-free: eps(null) + w (eps(y) - eps(null));  2 UNet calls per step",
            cfg_curve, dict(color="#1f77b4", marker="o")),
           ("classifier guidance: eps(null) - w sqrt(1-ab) grad log p(y | x_t, u);  1 UNet call "
            "+ 1 noisy-classifier gradient per step", cg_curve,
            dict(color="#d62728", marker="s"))]
  panels = [(axes[0], 1, "class accuracy of the samples", data_accuracy,
             "evaluation classifier on real test images"),
            (axes[1], 2, "FD to the test split (lower is better)", fd_floor,
             f"data floor ({num_samples} real train images)")]
  for ax, col, ylabel, ref, ref_label in panels:
    for label, curve, style in kinds:
      ax.plot([p[0] for p in curve], [p[col] for p in curve], label=label, ms=5, **style)
    line = ax.axhline(ref, ls="--", c="gray", lw=1, label=ref_label)
    ax.legend(handles=[line], loc="best", fontsize=8)  # placed where it hides no data
    ax.set_xlabel("guidance weight w  (w = 0: the unconditional model, both kinds)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
  names = [k[0] for k in kinds]
  handles = [h for h, label in zip(*axes[0].get_legend_handles_labels()) if label in names]
  fig.legend(handles, names, loc="lower center", ncol=1, fontsize=9, frameon=False)
  fig.suptitle(f"Classifier-free vs classifier guidance, digits 8x8 ({spec_label}, "
               f"{num_samples} class-conditional samples per point)", fontsize=12)
  fig.tight_layout(rect=(0, 0.13, 1, 1))
  plots.save_figure(fig, path)
  plt.close(fig)


def class_blocks_grid(blocks, path, *, scales, kind: str, vmax: int):
  """blocks: per guidance weight, samples [num_classes, per_class, H, W, C] (`by_class`); one
  row per class, the weights' blocks left to right."""
  num_classes, per_class = blocks[0].shape[:2]
  plots.image_grid(np.stack(blocks, 1).reshape(-1, *blocks[0].shape[2:]), path,
                   nrow=per_class * len(blocks), row_labels=[str(i) for i in range(num_classes)],
                   vmax=vmax, title=f"{kind} w = " + ", ".join(f"{w:g}" for w in scales)
                   + f" (blocks of {per_class}, left to right)", close=True)
