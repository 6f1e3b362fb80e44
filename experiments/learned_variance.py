"""Learned reverse variances (Nichol & Dhariwal, 2021) against fixed ones, on 8x8 digits.

  ardiff run experiments/learned_variance.py --workdir=runs/learned_variance

The fixed-variance UNet (digits_diffusion.py's, shared through the model cache) against one
that learns its variances with the hybrid objective L_simple + 0.001 L_vlb: the test bound in
bits per pixel for each Sigma (beta~, beta, learned) and FD of DDPM samples at low NFE with a
paired bootstrap over the same noise. What is measured, how, and the cuts for the CPU budget:
docs/learned_variance.md. Writes learned_variance.png (`ardiff.report.variance_figure`),
samples.png and results.md/.csv.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import model_cache
from ardiff.configs import require, sized
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.frechet import frechet_distance_from_stats, gaussian_stats
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes import randomness
from ardiff.processes.gaussian import samplers
from ardiff.processes.gaussian.likelihood import bpd as diffusion_bpd
from ardiff.processes.gaussian.samplers.base import per_example_normal
from ardiff.report import plots, write_results
from ardiff.report.variance_figure import MAIN, SHORT, STYLE, learned_variance_figure

SMOKE = ["train.steps=4", "train.log_every=2", "unet.base_channels=8",
         "unet.channel_mult=[1]", "diffusion.num_timesteps=10",
         "sample.num_samples=20", "sample.nfe=[2]", "sample.bpd_t_samples=2",
         "sample.bpd_examples=20", "sample.fraction_times=4", "classifier_steps=20"]


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
    keys = randomness.example_keys(key, labels.shape[0])
    x_init = per_example_normal(randomness.setup_keys(keys), jnp.zeros((labels.shape[0], *shape)))
    return samplers.sample(model_fn, params, schedule, x_init, keys, labels,
                           sampler="ddpm_learned", num_steps=num_steps)

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


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  levels, T, n = data.num_levels, c.diffusion.num_timesteps, c.sample.num_samples
  quality = SampleQuality.for_experiment(c, workdir, data)
  fixed, fixed_params = model_cache.train_model(
      "gaussian", c, workdir, data, c.unet, c.train, name=f"{data.name}-diffusion",
      diffusion=c.diffusion)
  learned, learned_params = model_cache.train_model(
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
      bounds[name] = diffusion_bpd(process, params[0], test_x, None, levels, k_bpd,
                                   num_t_samples=kt)
    else:
      bounds[name] = diffusion_bpd(process, params, test_x, None, levels, k_bpd,
                                   num_t_samples=kt, model_fn=model_fn)
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
  learned_variance_figure(fd, floor, bounds, (times, profile),
                          os.path.join(workdir, "learned_variance.png"), num_samples=n, T=T)
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
