"""The figure of experiments/ddpm_vs_ddim.py: per dataset, the distance between DDPM and DDIM
sets against NFE beside the floor of sampling noise, each sampler's distance to held-out data,
and the permutation test's p-value at each point."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import FormatStrFormatter, LogLocator

from ardiff.report import plots


def same_law_figure(panels, path):
  """One panel per dataset: d(DDPM, DDIM) and the floor against NFE, to-data distances dashed,
  the permutation test's p-value beside each DDPM-vs-DDIM point."""
  fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.0), squeeze=False)
  for ax, (title, ylabel, rows, data_floor, fmt) in zip(axes[0], panels):
    nfe = [r["NFE"] for r in rows]
    d = [r["ddpm_vs_ddim"] for r in rows]
    ax.errorbar(nfe, d, [r["ddpm_vs_ddim_std"] for r in rows], color="#d62728", marker="o",
                capsize=3, lw=2, label="DDPM vs DDIM (p: permutation test, seeds pooled)")
    for x, y, r in zip(nfe, d, rows):
      p, smallest = r["p_value"], 1.0 / (1 + r["permutations"])
      ax.annotate(f"p≤{p:.2g}" if p <= smallest else f"p={p:.2g}", (x, y), xytext=(4, 7),
                  textcoords="offset points", fontsize=8, color="#d62728")
    f = np.array([r["floor"] for r in rows])
    sf = np.array([r["floor_std"] for r in rows])
    ax.plot(nfe, f, color="#555555", marker="s", ms=4, lw=1.5,
            label="floor: DDPM vs DDPM of another seed (band ± 2 std)")
    ax.fill_between(nfe, np.maximum(f - 2 * sf, 0.5 * f.min()), f + 2 * sf, color="gray",
                    alpha=0.2, lw=0)
    for smp, color in (("ddpm", "#1f77b4"), ("ddim", "#2ca02c")):
      ax.plot(nfe, [r[f"{smp}_to_data"] for r in rows], color=color, ls="--", marker=".",
              lw=1, alpha=0.8, label=f"{smp.upper()} vs held-out data")
    ax.axhline(data_floor, color="black", ls=":", lw=1, label="real data vs held-out (same n)")
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(nfe) / 1.4, max(nfe) * 1.6)  # room for the p-values
    ax.set_xticks(nfe)
    ax.set_xticklabels([str(v) for v in nfe])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter(fmt))
    ax.yaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5)
  fig.suptitle("Do DDPM and DDIM reach the same distribution? (mean ± std over sampling "
               "seeds)", fontsize=12)
  fig.tight_layout()
  plots.save_figure(fig, path)
  plt.close(fig)
