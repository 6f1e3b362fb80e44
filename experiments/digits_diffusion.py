"""Image diffusion on 8x8 digits: UNet, every solver, class guidance, bpd, completion.

  ardiff run experiments/digits_diffusion.py --workdir=runs/digits_diffusion

Same data, split and quality metric as digits_ar.py, so the numbers compare directly.
Guidance two ways, on one solver and one set of samples: classifier-free (the UNet's own
conditional and unconditional streams) and classifier guidance of the unconditional UNet by a
separately trained noise-aware classifier p(y | x_t, u)
(`ardiff.processes.gaussian.classifier_guidance`); accuracy and FD are measured by the
feature classifier of SampleQuality, a third network that sees clean samples only.
Writes samples.png, guidance.png, classifier_guidance.png, guidance_compare.png,
completion.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import build, runs
from ardiff.configs import require
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.models.noisy_classifier import NoisyClassifierNet
from ardiff.presets import (config_dataset, image_config, train_section, validate_image_config,
                            validate_train)
from ardiff.processes.gaussian.classifier_guidance import NoisyClassifier, sample_with_classifier
from ardiff.processes.gaussian.inpaint import inpaint
from ardiff.processes.gaussian.likelihood import bpd as diffusion_bpd
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results

SMOKE_OVERRIDES = ["train.steps=4", "train.log_every=2", "unet.base_channels=8",
                   "unet.channel_mult=[1]", "diffusion.num_timesteps=10", "sample.num_samples=40",
                   "sample.runs=['ddim:2']", "sample.guidance_scales=[2.0]",
                   "sample.guidance_sampler=ddim:2", "sample.classifier_guidance_scales=[2.0]",
                   "noisy_classifier.widths=[4, 8]", "noisy_classifier.feature_dim=8",
                   "noisy_classifier.time_dim=8", "noisy_classifier.train.steps=4",
                   "noisy_classifier.train.log_every=2",
                   "sample.bpd_t_samples=2", "sample.completion_steps=5", "classifier_steps=20"]


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, diffusion=True)
  # Every solver; the pairs to read: DPM-Solver++ at 10 NFE against DDIM at 32, and each
  # solver at about 10 NFE (Heun's 5 steps are 9 evaluations).
  c.sample = dict(num_samples=500,
                  runs=["ddpm:1000", "ddpm:100", "ddim:50", "ddim:32", "ddim:10",
                        "dpmpp_2m:10", "dpmpp_3m:10", "heun:5", "heun:16", "euler_a:32",
                        "euler_a:10"],
                  guidance_sampler="ddim:50", guidance_scales=[0.0, 1.0, 2.0, 4.0],
                  classifier_guidance_scales=[0.0, 1.0, 2.0, 4.0, 8.0],
                  negative_class=3, bpd_t_samples=100, completion_steps=100)
  # The noise-aware classifier p(y | x_t, u) of classifier guidance: the feature classifier's
  # trunk plus a time embedding, trained on the diffusion's forward process (its own cache
  # entry in the model cache, keyed by this section, the dataset and the schedule).
  c.noisy_classifier = dict(widths=[32, 64], feature_dim=64, time_dim=64,
                            train=train_section(steps=3000, batch_size=128, learning_rate=2e-3,
                                                warmup_steps=100, weight_decay=1e-4,
                                                ema_decay=0.995, log_every=500))
  if scale != "small":  # paper and mnist
    c.sample.bpd_t_samples = 1000
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  dspec = validate_image_config(c)
  T = c.diffusion.num_timesteps
  process = _process(c, dspec)
  runs.check_specs(process, c.sample.runs, "sample.runs")
  runs.check_specs(process, [c.sample.guidance_sampler], "sample.guidance_sampler",
                   guidance=Guidance(1.0))
  require(0 <= c.sample.negative_class < dspec.num_classes, "sample.negative_class",
          f"must be a class id in 0..{dspec.num_classes - 1}, got {c.sample.negative_class}")
  require(1 <= c.sample.completion_steps <= T, "sample.completion_steps",
          f"must be in 1..num_timesteps={T}")
  require(c.sample.num_samples >= max(2, dspec.num_classes), "sample.num_samples",
          f"must be >= the number of classes ({dspec.num_classes}): the guidance grids show "
          "samples of every class")
  for key in ("guidance_scales", "classifier_guidance_scales"):
    scales = c.sample[key]
    require(len(scales) >= 1 and all(isinstance(w, (int, float)) and not isinstance(w, bool)
                                     and np.isfinite(w) for w in scales),
            f"sample.{key}", f"must be a non-empty list of numbers, got {list(scales)}")
  nc = c.noisy_classifier
  require(len(nc.widths) == 2 and all(isinstance(v, int) and v > 0 for v in nc.widths),
          "noisy_classifier.widths", f"must be two positive integers, got {list(nc.widths)}")
  for key in ("feature_dim", "time_dim"):
    require(isinstance(nc[key], int) and nc[key] > 0, f"noisy_classifier.{key}",
            f"must be a positive integer, got {nc[key]!r}")
  validate_train(nc.train, "noisy_classifier.train")


def _process(c, data):
  return build.build("gaussian", c.unet, data, c.dtype, diffusion=c.diffusion)


def _noisy_classifier(c, workdir, data, process):
  """The noise-aware classifier for classifier guidance: trained with the project's loop on
  x_t = sqrt(ab) x0 + sqrt(1 - ab) eps at t ~ U{1..T} of the process's schedule, cached in the
  model cache (keyed by its section, the dataset, the schedule and `runs.train_key` of its train
  section, so that a longer run extends it); (classifier, EMA params)."""
  nc = c.noisy_classifier
  net = NoisyClassifierNet(data.num_classes, widths=tuple(nc.widths),
                           feature_dim=nc.feature_dim, time_dim=nc.time_dim)
  classifier = NoisyClassifier.for_process(process, net)
  schedule = {"schedule": process.schedule_name, "num_timesteps": process.num_timesteps}
  net_section = {k: v for k, v in nc.items() if k != "train"}
  directory = runs.model_dir(c, workdir, f"{data.name}-noisy-classifier", data.name,
                             net_section, schedule, runs.train_key(nc.train))
  state = runs.train_cached(classifier, runs.model_inputs(process, data), data.y_train,
                            nc.train, directory)
  return classifier, state.ema_params


def _by_class(x, labels, num_classes, per_class):
  """The first per_class samples of each class: [num_classes, per_class, ...]."""
  return np.stack([x[labels == k][:per_class] for k in range(num_classes)])


def _plot_guidance_compare(cfg_curve, cg_curve, path, *, spec_label, num_samples,
                           data_accuracy, fd_floor):
  """Two panels against the guidance weight w: class accuracy and FD, one line per kind of
  guidance; curves are [(w, accuracy, fd)]."""
  import matplotlib.pyplot as plt

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


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  levels = data.num_levels
  quality = SampleQuality.create(data, cache_dir=os.path.join(workdir, c.model_cache),
                                 steps=c.classifier_steps)
  process, params = runs.train_model("gaussian", c, workdir, data, c.unet, c.train,
                                     name=f"{data.name}-diffusion", diffusion=c.diffusion)
  n, T, shape = c.sample.num_samples, c.diffusion.num_timesteps, data.shape
  key = jax.random.key(c.seed)
  null = np.full((n,), data.num_classes, np.int32)

  terms = diffusion_bpd(process, params, data.x_test, data.y_test, levels, jax.random.fold_in(key, 1),
                        num_t_samples=c.sample.bpd_t_samples)
  rows = [{"setting": "data (train split)", "NFE": 0, "fd": quality.floor(n),
           "accuracy": quality.test_accuracy()},
          {"setting": "variational bound (test split)", "NFE": T,
           "test_bpd": float(terms["total"]),
           **{f"bpd_{k}": float(v) for k, v in terms.items() if k != "total"}}]

  grids = []
  labels = np.arange(n) % data.num_classes
  for spec in map(parse_spec, c.sample.runs):
    row = {"setting": spec.label, "NFE": process.nfe(spec)}
    process.sample(params, key, null, spec)  # compile outside the timed block
    with runs.timed(row):
      x = np.asarray(runs.block(process.sample(params, key, null, spec)))
    row["fd"] = quality.frechet(x)
    xc = np.asarray(process.sample(params, key, labels, spec))
    row["accuracy"] = quality.accuracy(xc, labels)
    rows.append(row)
    grids.append((spec.label, x[:20]))
  plots.image_grid(np.concatenate([g for _, g in grids]), os.path.join(workdir, "samples.png"),
                   nrow=20, row_labels=[name for name, _ in grids], vmax=levels - 1,
                   title=f"Diffusion on {data.name}, unconditional samples", close=True)

  # Guidance: accuracy of the digit classifier on class-conditional samples per scale.
  spec = parse_spec(c.sample.guidance_sampler)
  # The grids show the first samples of each class of the measured batch (no second program
  # for another batch size): per_class of each, one row per class.
  per_class = min(10, n // data.num_classes)
  guide_grids, cfg_curve = [], []
  process.sample(params, key, labels, spec, guidance=Guidance(1.0))  # compile (w is traced)
  for w in c.sample.guidance_scales:
    guidance = Guidance(w)
    row = {"setting": f"guidance w={w:g} ({spec.label})",
           "NFE": process.nfe(spec, guidance=guidance)}
    with runs.timed(row):
      x = np.asarray(runs.block(process.sample(params, key, labels, spec, guidance=guidance)))
    row.update(fd=quality.frechet(x), accuracy=quality.accuracy(x, labels))
    rows.append(row)
    cfg_curve.append((w, row["accuracy"], row["fd"]))
    guide_grids.append(_by_class(x, labels, data.num_classes, per_class))
  neg = c.sample.negative_class
  away = Guidance(2.0, negative=neg)
  x = np.asarray(process.sample(params, key, null, spec, guidance=away))
  base = np.asarray(process.sample(params, key, null, spec))
  rows.append({"setting": f"unconditional, away from class {neg}, w=2",
               "NFE": process.nfe(spec, guidance=away), "fd": quality.frechet(x),
               f"share_of_class_{neg}": float(np.mean(quality.predict(x) == neg)),
               "share_without": float(np.mean(quality.predict(base) == neg))})
  # Rows: classes; within a row, one block of per_class samples per guidance scale.
  stacked = np.stack(guide_grids, 1).reshape(-1, *shape)
  plots.image_grid(stacked, os.path.join(workdir, "guidance.png"),
                   nrow=per_class * len(guide_grids),
                   row_labels=[str(i) for i in range(data.num_classes)], vmax=levels - 1,
                   title="Classifier-free guidance w = "
                   + ", ".join(f"{w:g}" for w in c.sample.guidance_scales)
                   + f" (blocks of {per_class}, left to right)", close=True)

  # Classifier guidance of the unconditional UNet by the noise-aware classifier, on the same
  # solver, labels and keys: eps(x, u, null) - w sqrt(1 - ab) grad log p(y | x, u).
  classifier, classifier_params = _noisy_classifier(c, workdir, data, process)
  test_unit = levels_to_unit(data.x_test, levels)
  noisy_acc = {u: classifier.accuracy(classifier_params, test_unit, data.y_test, u,
                                      jax.random.fold_in(key, 4))
               for u in (0.0, 0.25, 0.5, 0.75)}
  rows.append({"setting": "noisy classifier (for guidance) at u=0, test split", "NFE": 0,
               "accuracy": noisy_acc[0.0]})

  def classifier_guided(w):
    return sample_with_classifier(process, params, classifier, classifier_params, key, labels,
                                  spec, w)

  classifier_guided(1.0)  # compile (w is traced: one program for the sweep)
  cg_grids, cg_curve = [], []
  for w in c.sample.classifier_guidance_scales:
    # One diffusion network evaluation per solver evaluation, plus the classifier's forward
    # and backward pass (counted apart: classifier_evals).
    row = {"setting": f"classifier guidance w={w:g} ({spec.label})", "NFE": process.nfe(spec),
           "classifier_evals": process.nfe(spec)}
    with runs.timed(row):
      x = np.asarray(runs.block(classifier_guided(w)))
    row.update(fd=quality.frechet(x), accuracy=quality.accuracy(x, labels))
    rows.append(row)
    cg_curve.append((w, row["accuracy"], row["fd"]))
    cg_grids.append(_by_class(x, labels, data.num_classes, per_class))
  plots.image_grid(np.stack(cg_grids, 1).reshape(-1, *shape),
                   os.path.join(workdir, "classifier_guidance.png"),
                   nrow=per_class * len(cg_grids),
                   row_labels=[str(i) for i in range(data.num_classes)], vmax=levels - 1,
                   title="Classifier guidance w = "
                   + ", ".join(f"{w:g}" for w in c.sample.classifier_guidance_scales)
                   + f" (blocks of {per_class}, left to right)", close=True)
  _plot_guidance_compare(cfg_curve, cg_curve, os.path.join(workdir, "guidance_compare.png"),
                         spec_label=spec.label, num_samples=n,
                         data_accuracy=quality.test_accuracy(), fd_floor=quality.floor(n))

  # Completion: one missing pixel (the source material's first example), then the lower half.
  x_known = levels_to_unit(data.x_test[:10], levels)
  h, w_ = shape[0], shape[1]
  one = np.ones((10, *shape), bool)
  one[:, h // 2, w_ // 2] = False
  half = np.ones((10, *shape), bool)
  half[:, h // 2:] = False
  panels = [data.x_test[:10]]
  for mask in (one, half):
    out = inpaint(process.eps_fn, params, process.schedule, jnp.asarray(x_known), jnp.asarray(mask),
                  jax.random.fold_in(key, 3), jnp.full((10,), data.num_classes, jnp.int32),
                  sampler="ddpm", num_steps=c.sample.completion_steps)
    out = np.asarray(process.to_data(out))
    rows.append({"setting": f"completion, {int((~mask[0]).sum())} unknown pixels",
                 "NFE": c.sample.completion_steps,
                 "mean_abs_level_error": float(np.mean(np.abs(out.astype(int) - data.x_test[:10])[~mask])),
                 "known_pixels_kept": float(np.all(out[mask] == data.x_test[:10][mask]))})
    panels.append(np.where(mask, data.x_test[:10], 0).astype(np.uint8))
    panels.append(out)
  plots.image_grid(np.concatenate(panels), os.path.join(workdir, "completion.png"), nrow=10,
                   row_labels=["original", "1 pixel hidden", "completed", "lower half hidden",
                               "completed"], vmax=levels - 1,
                   title=f"Completion with DDPM ({c.sample.completion_steps} steps)", close=True)

  notes = (f"{data.description}. UNet base {c.unet.base_channels}, "
           f"mult {tuple(c.unet.channel_mult)}; {c.diffusion.schedule} schedule, T={T}, target "
           f"{c.diffusion.target}; {c.train.steps} steps of batch {c.train.batch_size}. "
           "test_bpd: the variational bound in bits per pixel with a discretised Gaussian "
           "decoder over the 17 levels (prior + diffusion + reconstruction terms, "
           f"diffusion term estimated from {c.sample.bpd_t_samples} timesteps per image); "
           "directly comparable to the AR models' bpd. fd/accuracy: as in digits_ar. "
           "Classifier-free guidance: eps(null) + w (eps(y) - eps(null)), two streams (NFE "
           "doubled). Classifier guidance: eps(null) - w sqrt(1 - ab) grad_x log p(y | x_t, u) "
           "with a noise-aware classifier (widths "
           f"{tuple(c.noisy_classifier.widths)}, {c.noisy_classifier.train.steps} steps); its "
           "test accuracy at u = 0 / 0.25 / 0.5 / 0.75: "
           + " / ".join(f"{a:.3f}" for a in noisy_acc.values())
           + "; classifier_evals counts its forward + backward passes. Both start from the "
           "same noise with the same labels.")
  write_results(workdir, rows, f"{data.name}: diffusion", notes)
  return rows
