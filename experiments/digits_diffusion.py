"""Image diffusion on 8x8 digits: UNet, every solver, class guidance, bpd, completion.

  ardiff run experiments/digits_diffusion.py --workdir=runs/digits_diffusion

Same data, split and quality metric as digits_ar.py, so the numbers compare directly;
classifier-free against classifier guidance on one solver and one set of samples (how, and
what each measures: docs/digits_diffusion.md). Writes samples.png, guidance.png,
classifier_guidance.png, guidance_compare.png (`ardiff.report.guidance_figure`),
completion.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import build, experiment_helpers, model_cache
from ardiff.configs import require, sized
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.completion import completion_masks, completion_scores
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.models.noisy_classifier import NoisyClassifierNet
from ardiff.presets import (SCALES, config_dataset, image_config, train_section,
                            validate_image_config, validate_train)
from ardiff.processes.gaussian.classifier_guidance import NoisyClassifier, sample_with_classifier
from ardiff.processes.gaussian.inpaint import inpaint
from ardiff.processes.gaussian.likelihood import bpd as diffusion_bpd
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results
from ardiff.report.guidance_figure import by_class, class_blocks_grid, guidance_compare_figure

SMOKE = ["train.steps=4", "train.log_every=2", "unet.base_channels=8",
         "unet.channel_mult=[1]", "diffusion.num_timesteps=10", "sample.num_samples=40",
         "sample.runs=['ddim:2']", "sample.guidance_scales=[2.0]",
         "sample.guidance_sampler=ddim:2", "sample.classifier_guidance_scales=[2.0]",
         "noisy_classifier.widths=[4, 8]", "noisy_classifier.feature_dim=8",
         "noisy_classifier.time_dim=8", "noisy_classifier.train.steps=4",
         "noisy_classifier.train.log_every=2",
         "sample.bpd_t_samples=2", "sample.completion_steps=5", "classifier_steps=20"]


@sized(scales=SCALES, smoke=SMOKE)
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
  experiment_helpers.check_specs(process, c.sample.runs, "sample.runs")
  experiment_helpers.check_specs(process, [c.sample.guidance_sampler], "sample.guidance_sampler",
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
  model cache (keyed by its section, the dataset, the schedule and `model_cache.train_key` of
  its train section, so that a longer run extends it); (classifier, EMA params)."""
  nc = c.noisy_classifier
  net = NoisyClassifierNet(data.num_classes, widths=tuple(nc.widths),
                           feature_dim=nc.feature_dim, time_dim=nc.time_dim)
  classifier = NoisyClassifier.for_process(process, net)
  schedule = {"schedule": process.schedule_name, "num_timesteps": process.num_timesteps}
  net_section = {k: v for k, v in nc.items() if k != "train"}
  model = model_cache.fit_cached(classifier, c, workdir, data, nc.train,
                                 name=f"{data.name}-noisy-classifier",
                                 key=(data.name, net_section, schedule),
                                 inputs=model_cache.model_inputs(process, data))
  return classifier, model.params


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  levels = data.num_levels
  quality = SampleQuality.for_experiment(c, workdir, data)
  process, params = model_cache.train_model("gaussian", c, workdir, data, c.unet, c.train,
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
    with experiment_helpers.timed(row):
      x = np.asarray(experiment_helpers.block(process.sample(params, key, null, spec)))
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

  def sweep(scales, sample, header):
    """Rows, the (w, accuracy, fd) curve and the class blocks of `sample(w)` for each w."""
    sample(1.0)  # compile outside the timed blocks (w is traced: one program for the sweep)
    curve, blocks = [], []
    for w in scales:
      row = header(w)
      with experiment_helpers.timed(row):
        x = np.asarray(experiment_helpers.block(sample(w)))
      rows.append(dict(row, fd=quality.frechet(x), accuracy=quality.accuracy(x, labels)))
      curve.append((w, rows[-1]["accuracy"], rows[-1]["fd"]))
      blocks.append(by_class(x, labels, data.num_classes, per_class))
    return curve, blocks

  cfg_curve, guide_grids = sweep(
      c.sample.guidance_scales,
      lambda w: process.sample(params, key, labels, spec, guidance=Guidance(w)),
      lambda w: {"setting": f"guidance w={w:g} ({spec.label})",
                 "NFE": process.nfe(spec, guidance=Guidance(w))})
  neg = c.sample.negative_class
  away = Guidance(2.0, negative=neg)
  x = np.asarray(process.sample(params, key, null, spec, guidance=away))
  base = np.asarray(process.sample(params, key, null, spec))
  rows.append({"setting": f"unconditional, away from class {neg}, w=2",
               "NFE": process.nfe(spec, guidance=away), "fd": quality.frechet(x),
               f"share_of_class_{neg}": float(np.mean(quality.predict(x) == neg)),
               "share_without": float(np.mean(quality.predict(base) == neg))})
  class_blocks_grid(guide_grids, os.path.join(workdir, "guidance.png"), vmax=levels - 1,
                    scales=c.sample.guidance_scales, kind="Classifier-free guidance")

  # Classifier guidance of the unconditional UNet by the noise-aware classifier, on the same
  # solver, labels and keys: eps(x, u, null) - w sqrt(1 - ab) grad log p(y | x, u).
  classifier, classifier_params = _noisy_classifier(c, workdir, data, process)
  test_unit = levels_to_unit(data.x_test, levels)
  noisy_acc = {u: classifier.accuracy(classifier_params, test_unit, data.y_test, u,
                                      jax.random.fold_in(key, 4))
               for u in (0.0, 0.25, 0.5, 0.75)}
  rows.append({"setting": "noisy classifier (for guidance) at u=0, test split", "NFE": 0,
               "accuracy": noisy_acc[0.0]})

  # One diffusion network evaluation per solver evaluation, plus the classifier's forward and
  # backward pass (counted apart: classifier_evals).
  cg_curve, cg_grids = sweep(
      c.sample.classifier_guidance_scales,
      lambda w: sample_with_classifier(process, params, classifier, classifier_params, key,
                                       labels, spec, w),
      lambda w: {"setting": f"classifier guidance w={w:g} ({spec.label})",
                 "NFE": process.nfe(spec), "classifier_evals": process.nfe(spec)})
  class_blocks_grid(cg_grids, os.path.join(workdir, "classifier_guidance.png"), vmax=levels - 1,
                    scales=c.sample.classifier_guidance_scales, kind="Classifier guidance")
  guidance_compare_figure(cfg_curve, cg_curve, os.path.join(workdir, "guidance_compare.png"),
                          spec_label=spec.label, num_samples=n,
                          data_accuracy=quality.test_accuracy(), fd_floor=quality.floor(n))

  # Completion: one missing pixel (the source material's first example), then the lower half.
  x_known = levels_to_unit(data.x_test[:10], levels)
  panels = [data.x_test[:10]]
  for mask in completion_masks(10, shape):
    out = inpaint(process.eps_fn, params, process.schedule, jnp.asarray(x_known), jnp.asarray(mask),
                  jax.random.fold_in(key, 3), jnp.full((10,), data.num_classes, jnp.int32),
                  sampler="ddpm", num_steps=c.sample.completion_steps)
    out = np.asarray(process.to_data(out))
    rows.append({"setting": f"completion, {int((~mask[0]).sum())} unknown pixels",
                 "NFE": c.sample.completion_steps,
                 **completion_scores(out, data.x_test[:10], mask)})
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
