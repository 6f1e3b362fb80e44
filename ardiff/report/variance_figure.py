"""The learned-variance figure (experiments/learned_variance.py): FD against NFE with the
paired differences, the variational bounds, and the learned interpolation f against t.

The variants, in the order the experiment measures them: the fixed-variance model with
Sigma = beta~ and with Sigma = beta, the learned-variance (hybrid) model with its own Sigma,
and the hybrid model's eps with each fixed Sigma (the variance alone, same network).
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from ardiff.report import plots

VARIANTS = ("fixed beta~", "fixed beta", "learned", "learned eps, beta~", "learned eps, beta")
MAIN = VARIANTS[:3]
STYLE = {"fixed beta~": dict(color="#1f77b4", marker="o", label="fixed Σ = β̃ (DDPM's small)"),
         "fixed beta": dict(color="#ff7f0e", marker="s", label="fixed Σ = β (DDPM's large)"),
         "learned": dict(color="#2ca02c", marker="^", label="learned Σ (hybrid objective)"),
         "learned eps, beta~": dict(color="#1f77b4", marker="o", ls=":", mfc="none", alpha=0.7,
                                    label="hybrid model's eps, fixed Σ = β̃"),
         "learned eps, beta": dict(color="#ff7f0e", marker="s", ls=":", mfc="none", alpha=0.7,
                                   label="hybrid model's eps, fixed Σ = β")}
SHORT = {"fixed beta~": "β̃", "fixed beta": "β", "learned": "learned",
         "learned eps, beta~": "β̃", "learned eps, beta": "β"}


def learned_variance_figure(fd, floor, bounds, profile, path, *, num_samples, T):
  """fd {name: {nfe: (value, paired-bootstrap std of value - fixed beta~'s)}}; bounds
  {name: terms}; profile (times, quantiles [times, 3])."""
  fig = plt.figure(figsize=(17.0, 5.6))
  grid = fig.add_gridspec(2, 3, height_ratios=[1.6, 1], width_ratios=[1.2, 0.9, 1])
  ax, ax_diff = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0])
  ticks = sorted(fd[MAIN[0]])
  for name in MAIN:
    ax.plot(ticks, [fd[name][k][0] for k in ticks], ms=6, **STYLE[name])
    if name != "fixed beta~":
      ax_diff.errorbar(ticks, [fd[name][k][0] - fd["fixed beta~"][k][0] for k in ticks],
                       yerr=[2 * fd[name][k][1] for k in ticks], capsize=3, ms=5,
                       **STYLE[name])
  ax_diff.axhline(0, color=STYLE["fixed beta~"]["color"], lw=1.5)
  for a in (ax, ax_diff):
    a.set_xscale("log")
    a.set_xticks(ticks, [str(k) for k in ticks])
    a.minorticks_off()
    a.grid(alpha=0.3)
  ax.tick_params(labelbottom=False)
  ax.set_ylabel("FD to the test split")
  ax.set_title(f"DDPM samples, {num_samples} unconditional, same noise for all\n"
               f"(lower is better; real images score {floor:.1f})", fontsize=11)
  ax.legend(fontsize=8, loc="upper right")
  ax_diff.set_ylabel("FD − FD(Σ = β̃)")
  ax_diff.set_xlabel("network evaluations (DDPM steps, respaced)")
  ax_diff.text(0.99, 0.95, "error bars: ±2 paired-bootstrap std", transform=ax_diff.transAxes,
               ha="right", va="top", fontsize=8)

  ax = fig.add_subplot(grid[:, 1])
  groups = [("fixed model", ["fixed beta~", "fixed beta"]),
            ("hybrid model", ["learned eps, beta~", "learned eps, beta", "learned"])]
  y, labels = 0, []
  for group, names in groups:
    for name in names:
      total = bounds[name]["total"]
      style = STYLE[name]
      ax.plot([total], [y], ls="none", ms=9, marker=style["marker"], color=style["color"],
              mfc=style.get("mfc", style["color"]))
      ax.text(total, y + 0.28, f"{total:.3f}", ha="center", fontsize=9)
      sigma = "learned Σ" if name == "learned" else f"fixed Σ = {SHORT[name]}"
      labels.append((y, f"{group},\n{sigma}"))
      y -= 1
    y -= 0.5
  ax.set_yticks([p for p, _ in labels], [text for _, text in labels], fontsize=9)
  lo = min(b["total"] for b in bounds.values())
  hi = max(b["total"] for b in bounds.values())
  ax.set_xlim(lo - 0.15 * (hi - lo) - 0.02, hi + 0.15 * (hi - lo) + 0.02)
  ax.set_ylim(y + 0.8, 0.8)
  ax.set_xlabel("bits per pixel (upper bound on the test split; lower is better)")
  ax.set_title(f"Variational bound, T = {T}\n(all of it is the diffusion KL terms: prior "
               "and decoder < 1e-8 bits/pixel)", fontsize=11)
  ax.grid(alpha=0.3, axis="x")

  ax = fig.add_subplot(grid[:, 2])
  ts, q = profile
  ax.fill_between(ts, q[:, 0], q[:, 2], color=STYLE["learned"]["color"], alpha=0.25,
                  label="10-90% of pixels")
  ax.plot(ts, q[:, 1], color=STYLE["learned"]["color"], label="median")
  ax.axhline(0, c="k", lw=0.8)
  ax.axhline(1, c="k", lw=0.8)
  ax.text(0.5, 1.01, "Σ = β", va="bottom", ha="center", fontsize=9)
  ax.text(0.5, 0.01, "Σ = β̃", va="bottom", ha="center", fontsize=9)
  ax.set_xlabel("time t / T")
  ax.set_ylabel("learned f   (log Σ = f log β + (1 − f) log β̃)")
  ax.set_title("The learned interpolation f\non noised test images", fontsize=11)
  ax.legend(fontsize=8, loc="upper right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  plots.save_figure(fig, path)
  plt.close(fig)
