"""Learned reverse variances (Nichol & Dhariwal, 2021) against fixed ones, on 8x8 digits.

  ardiff run experiments/learned_variance.py --workdir=runs/learned_variance

Two UNets with the same sections and training (image_config's small scale): the fixed-variance
model is digits_diffusion.py's ("gaussian", shared through the model cache), the learned one
("gaussian_learned_var") outputs eps and v per pixel and trains with the hybrid objective
L_simple + 0.001 L_vlb (uniform timesteps, eps gradient stopped inside L_vlb).

Measured on the test split: the variational bound in bits per pixel, unconditional (null
label), for the fixed model with Sigma = beta~ (`likelihood.py`, decoder sigma^2 = beta_1) and
with Sigma = beta (decoder beta_1), and for the learned model with its own variances; all with
the same key, hence the same timesteps and noise. Then FD of unconditional DDPM samples at low
NFE, respaced to N uniform steps from sigma_max = 80 (the project's grid; the paper uses integer
strided steps from T): fixed beta~ (this is the `ddpm` solver), fixed beta, and the learned
variance interpolated between the respaced beta' and beta~'. The two models start from the
same initialisation and see the same batches (the out conv starts at zero, the trunk's init
does not depend on its width), so they differ only by L_vlb's gradient through the shared
trunk: the notes report how far their eps outputs are apart, and the bound is also computed
for the hybrid model's own eps with the two fixed variances (the variance alone, same network).
FD error bars: a paired bootstrap over the samples (every variant draws the same initial and
step noise, so differences are measured on the same draws); they leave out training-seed
variation. Writes learned_variance.png (FD vs NFE and the paired differences, the bounds, the
learned fraction f against t), samples.png and results.md/.csv.

Cut for the CPU budget: 400 samples per FD (digits_diffusion: 500), NFE 10/25/50/100 (no
1000), one sampling seed, the bound's diffusion term from 50 timesteps per image (an unbiased
estimate; digits_diffusion: 100), no FD for the hybrid model's eps with fixed variances (a first
run measured it within 0.7 FD of the fixed model's at every NFE).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import runs
from ardiff.configs import require, sized
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.frechet import frechet_distance_from_stats, gaussian_stats
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes import discrete
from ardiff.processes.gaussian import learned_variance as lv
from ardiff.processes.gaussian.likelihood import bpd as fixed_bpd
from ardiff.processes.gaussian.samplers import ddpm_learned
from ardiff.processes.gaussian.samplers.base import per_example_normal
from ardiff.report import plots, write_results

SMOKE = ["train.steps=4", "train.log_every=2", "unet.base_channels=8",
         "unet.channel_mult=[1]", "diffusion.num_timesteps=10",
         "sample.num_samples=20", "sample.nfe=[2]", "sample.bpd_t_samples=2",
         "sample.bpd_examples=20", "sample.fraction_times=4", "classifier_steps=20"]

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


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, diffusion=True)  # the same sections as digits_diffusion.py
  c.learned_variance = dict(vlb_weight=0.001)
  c.sample = dict(num_samples=400, nfe=[10, 25, 50, 100], bpd_t_samples=50, bpd_examples=0,
                  fraction_times=24, bootstrap=200)
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  validate_image_config(c)
  T = c.diffusion.num_timesteps
  require(c.diffusion.target == "eps", "diffusion.target",
          f"learned variances train with the eps target, got {c.diffusion.target!r}")
  require(len(c.sample.nfe) >= 1 and all(isinstance(n, int) and 1 <= n <= T
                                         for n in c.sample.nfe),
          "sample.nfe", f"must be step counts in 1..num_timesteps={T}, got {list(c.sample.nfe)}")
  require(c.sample.num_samples >= 2, "sample.num_samples", "must be >= 2")
  require(isinstance(c.sample.bpd_t_samples, int) and c.sample.bpd_t_samples >= 1,
          "sample.bpd_t_samples", f"must be a positive integer, got {c.sample.bpd_t_samples!r}")
  require(isinstance(c.sample.bpd_examples, int) and c.sample.bpd_examples >= 0,
          "sample.bpd_examples", "must be >= 0 (0: the whole test split)")
  require(isinstance(c.sample.fraction_times, int) and c.sample.fraction_times >= 2,
          "sample.fraction_times", "must be an integer >= 2")
  require(c.learned_variance.vlb_weight >= 0, "learned_variance.vlb_weight", "must be >= 0")
  require(isinstance(c.sample.bootstrap, int) and c.sample.bootstrap >= 2, "sample.bootstrap",
          "must be an integer >= 2 (bootstrap resamples of the FD)")


@dataclasses.dataclass(frozen=True)
class TracedFraction:
  """An eps-only model with the fraction f read from params = (net params, f): the fixed beta
  (f = 1) and beta~ (f = 0) chains of one network share one compiled sampler."""

  eps_fn: Callable[..., Any]

  def __call__(self, params, x, t, y):
    net, frac = params
    return self.eps_fn(net, x, t, y), jnp.full(x.shape, frac, x.dtype)


def _sampler(model_fn, schedule, shape, num_steps):
  """Unconditional samples in model space: noise as every process draws it, then DDPM with
  the model's fraction on the uniform grid from sigma_max = 80."""

  def draw(params, key, labels):
    keys = discrete.example_keys(key, labels.shape[0])
    x_init = per_example_normal(discrete.setup_keys(keys), jnp.zeros((labels.shape[0], *shape)))
    return ddpm_learned.sample(model_fn, params, schedule, x_init, keys, labels,
                               num_steps=num_steps)

  return draw


def _fraction_profile(process, params, x, times, key):
  """Quantiles (10, 50, 90%) over pixels and images of the learned f at each time, on x_t
  drawn from the forward process of test images."""
  out, eps_frac = [], jax.jit(process.eps_frac_fn)
  for i, u in enumerate(times):
    ab = float(process.schedule.alpha_bar_at(u))
    eps = jax.random.normal(jax.random.fold_in(key, i), x.shape)
    x_t = np.sqrt(ab) * x + np.sqrt(1 - ab) * eps
    _, frac = eps_frac(params, x_t, jnp.full((len(x),), u), jnp.full((len(x),),
                                                                      process.null_label))
    out.append(np.quantile(np.asarray(frac), [0.1, 0.5, 0.9]))
  return np.asarray(out)


def _eps_gap(fixed, fixed_params, learned, learned_params, x, key, num_times=10):
  """RMS(eps_fixed - eps_learned) / RMS(eps_fixed) over noised images x at num_times times."""
  eps_a, eps_b = jax.jit(fixed.eps_fn), jax.jit(learned.eps_fn)
  num = den = 0.0
  null = jnp.full((len(x),), fixed.null_label)
  for i, u in enumerate(np.linspace(0.05, 0.95, num_times)):
    ab = float(fixed.schedule.alpha_bar_at(u))
    x_t = np.sqrt(ab) * x + np.sqrt(1 - ab) * jax.random.normal(jax.random.fold_in(key, i),
                                                                x.shape)
    u_b = jnp.full((len(x),), u)
    a, b = eps_a(fixed_params, x_t, u_b, null), eps_b(learned_params, x_t, u_b, null)
    num += float(jnp.sum((a - b) ** 2))
    den += float(jnp.sum(a**2))
  return float(np.sqrt(num / den))


def _bootstrap_fd(features, test_stats, num, seed):
  """FD of each variant's samples and its paired-bootstrap replicates: features {name: [n, D]}
  whose row i comes from the same noise in every variant, resampled with one set of indices
  per replicate for all variants. Returns {name: (fd, replicates [num])}."""
  rng = np.random.default_rng(seed)
  n = len(next(iter(features.values())))
  idx = [rng.integers(0, n, n) for _ in range(num)]

  def fd(f):
    return frechet_distance_from_stats(*gaussian_stats(f), *test_stats)

  return {name: (fd(f), np.array([fd(f[i]) for i in idx])) for name, f in features.items()}


def _plot(fd, floor, bounds, profile, path, *, num_samples, T):
  """fd {name: {nfe: (value, paired-bootstrap std of value - fixed beta~'s)}}; bounds
  {name: terms}; profile (times, quantiles [times, 3])."""
  import matplotlib.pyplot as plt

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


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  levels, T, n = data.num_levels, c.diffusion.num_timesteps, c.sample.num_samples
  quality = SampleQuality.for_experiment(c, workdir, data)
  fixed, fixed_params = runs.train_model("gaussian", c, workdir, data, c.unet, c.train,
                                         name=f"{data.name}-diffusion", diffusion=c.diffusion)
  learned, learned_params = runs.train_model(
      "gaussian_learned_var", c, workdir, data, c.unet, c.train,
      name=f"{data.name}-learned-var", diffusion=c.diffusion,
      learned_variance=c.learned_variance)
  key = jax.random.key(c.seed)
  # Every variant: (model function (eps, f), its params). A fixed f is traced (params), so the
  # beta and beta~ runs of one network share one compiled program.
  models = {"fixed beta~": (TracedFraction(fixed.eps_fn), (fixed_params, 0.0)),
            "fixed beta": (TracedFraction(fixed.eps_fn), (fixed_params, 1.0)),
            "learned": (learned.eps_frac_fn, learned_params),
            "learned eps, beta~": (TracedFraction(learned.eps_fn), (learned_params, 0.0)),
            "learned eps, beta": (TracedFraction(learned.eps_fn), (learned_params, 1.0))}

  # The bound (unconditional): same key -> same timesteps and noise for every variant. The
  # beta~ bounds are likelihood.py's; beta and learned are this project's learned-variance
  # bound (which equals likelihood.py's at f = 0 for t >= 2, f = 1 at t = 1: tested).
  test_x = data.x_test[:c.sample.bpd_examples or None]
  k_bpd, kt = jax.random.fold_in(key, 1), c.sample.bpd_t_samples
  bounds = {}
  for name, (model_fn, params) in models.items():
    process = fixed if name.startswith("fixed") else learned
    if name.endswith("beta~"):
      bounds[name] = fixed_bpd(process, params[0], test_x, None, levels, k_bpd,
                               num_t_samples=kt)
    else:
      bounds[name] = lv.bpd(model_fn, params, process.schedule, test_x, None, levels, k_bpd,
                            null_label=process.null_label, num_t_samples=kt)
  floor = quality.floor(n)
  rows = [{"setting": "data (train split)", "NFE": 0, "fd": floor}]
  for name, terms in bounds.items():
    rows.append({"setting": f"bound, {STYLE[name]['label']}", "NFE": T,
                 "test_bpd": terms["total"],
                 **{f"bpd_{k}": v for k, v in terms.items() if k != "total"}})

  # FD of DDPM samples at each NFE, every variant from the same noise (the hybrid model's eps
  # with fixed variances is left out: see the module doc).
  null = jnp.full((n,), data.num_classes, jnp.int32)
  test_stats = gaussian_stats(quality.test_features)
  fd, grids = {name: {} for name in MAIN}, []
  for steps in c.sample.nfe:
    feats = {}
    for name in MAIN:
      model_fn, params = models[name]
      draw = _sampler(model_fn, learned.schedule, data.shape, steps)  # compiled inside
      x = np.asarray(learned.to_data(draw(params, key, null)))
      feats[name] = quality.features(x)
      if steps == min(c.sample.nfe):
        grids.append(("learned Σ" if name == "learned" else f"fixed Σ = {SHORT[name]}",
                      x[:16]))
    boot = _bootstrap_fd(feats, test_stats, c.sample.bootstrap, c.seed + steps)
    ref, ref_boot = boot["fixed beta~"]
    for name in MAIN:
      value, reps = boot[name]
      row = {"setting": f"DDPM {steps}, {STYLE[name]['label']}", "NFE": steps, "fd": value,
             "fd_boot_std": float(reps.std())}
      diff_std = 0.0
      if name != "fixed beta~":
        diff_std = float((reps - ref_boot).std())
        row.update(fd_minus_fixed_beta_tilde=value - ref, diff_boot_std=diff_std)
      fd[name][steps] = (value, diff_std)
      rows.append(row)

  # How far apart the two networks' eps are: same init and batches, only L_vlb's gradient
  # through the shared trunk differs.
  test_unit = levels_to_unit(data.x_test[:64], levels)
  eps_gap = _eps_gap(fixed, fixed_params, learned, learned_params, test_unit,
                     jax.random.fold_in(key, 3))
  times = np.linspace(1.0 / T, 1.0, c.sample.fraction_times)
  profile = _fraction_profile(learned, learned_params, test_unit, times,
                              jax.random.fold_in(key, 2))
  outside = float(np.mean((profile[:, 0] < 0) | (profile[:, 2] > 1)))
  _plot(fd, floor, bounds, (times, profile), os.path.join(workdir, "learned_variance.png"),
        num_samples=n, T=T)
  plots.image_grid(np.concatenate([g for _, g in grids]), os.path.join(workdir, "samples.png"),
                   nrow=16, row_labels=[name for name, _ in grids], vmax=levels - 1,
                   title=f"DDPM {min(c.sample.nfe)} steps, same noise", close=True)

  notes = (f"{data.description}. Both UNets: base {c.unet.base_channels}, mult "
           f"{tuple(c.unet.channel_mult)}, {c.diffusion.schedule} schedule, T={T}, eps target, "
           f"clip_x0={c.diffusion.clip_x0}, {c.train.steps} steps of batch "
           f"{c.train.batch_size}, one training seed each; the hybrid one has 2 output channels "
           f"(eps, v; f = (v+1)/2, unclipped) and trains on L_simple + "
           f"{c.learned_variance.vlb_weight:g} L_vlb with uniform t and eps's gradient stopped "
           "inside L_vlb. Bounds: unconditional, "
           f"{len(test_x)} test images, diffusion term from {kt} timesteps per image (same "
           "draws for every row); Σ = β̃ rows are likelihood.py's (decoder sigma^2 = beta_1), "
           "Σ = β rows have decoder beta_1 too, the learned decoder variance interpolates "
           "between beta~_2 and beta_1. DDPM: N uniform steps from sigma_max = 80; Σ = β̃ is "
           "the ddpm solver; the learned variance interpolates between the respaced beta' and "
           f"beta~'. FD: {n} unconditional samples per row, all rows from the same noise; "
           f"fd_boot_std: std over {c.sample.bootstrap} bootstrap resamples of the samples; "
           "fd_minus_fixed_beta_tilde and diff_boot_std: the difference to the fixed-variance "
           "model's Σ = β̃ row at the same NFE and its paired-bootstrap std (sampling noise "
           f"only, not training seeds). Learned f on 64 test images at {len(times)} times: median "
           f"{profile[:, 1].min():.2f}..{profile[:, 1].max():.2f}; share of times whose 10-90% "
           f"band leaves [0, 1]: {outside:.2f}. The two networks start from the same init and "
           "see the same batches (only L_vlb's gradient through the shared trunk differs): "
           "RMS of the difference of their eps on noised test images / RMS of eps = "
           f"{eps_gap:.3f} (t/T in 0.05..0.95), so the comparison is close to paired in the "
           "network too.")
  write_results(workdir, rows, f"{data.name}: learned vs fixed reverse variances", notes)
  return rows
