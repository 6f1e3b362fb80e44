"""Predicting everything at once averages into a blurry mean; one pixel at a time does not.

  ardiff run experiments/blurry_mean.py --workdir=runs/blurry_mean

A network that predicts a whole 8x8 digit in ONE shot by regression (mean squared error)
(a) from nothing (the null label: its optimum is the data mean) and (b) from the class label
(the class mean), against raster AR, one pixel at a time (the cached model of digits_ar.py:
same `ar`, `train`, `dataset` and `model_cache`). Measures Fréchet distance (with its floor),
classifier accuracy of class-conditional samples, sharpness (mean |Laplacian|) and the entropy
of the grey-level histogram, each beside the data's. Writes samples.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from ardiff import experiment_helpers, model_cache
from ardiff.configs import require, sized
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.sample_quality import SampleQuality, pixel_entropy, sharpness
from ardiff.presets import (SCALES, config_dataset, image_config, oneshot_section, train_section,
                            validate_image_config, validate_train)
from ardiff.processes.guidance import Guidance
from ardiff.report import plots, write_results

SMOKE = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
         "oneshot.width=16", "oneshot_train.steps=4", "oneshot_train.log_every=2",
         "sample.num_samples=40", "sample.per_class=2", "classifier_steps=20"]


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True)  # digits_ar.py's raster AR model is reused
  c.oneshot = oneshot_section()
  # Same steps and batch as the AR model; a shorter EMA so the average forgets the init.
  c.oneshot_train = train_section(ema_decay=0.99)
  # Specs of the two models (each spec's NFE is counted by its process).
  c.sample = dict(num_samples=500, guidance=1.0, per_class=6, oneshot="oneshot",
                  raster="raster")
  if scale != "small":  # paper and mnist
    c.oneshot_train = train_section(steps=50_000, batch_size=256, ema_decay=0.99)
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  from ardiff import build

  data = validate_image_config(c)
  validate_train(c.oneshot_train, "oneshot_train")
  require(c.oneshot.width >= 1, "oneshot.width", f"must be >= 1, got {c.oneshot.width}")
  require(c.oneshot.depth >= 0, "oneshot.depth", f"must be >= 0, got {c.oneshot.depth}")
  require(0 <= c.oneshot.p_uncond <= 1, "oneshot.p_uncond",
          f"must lie in [0, 1], got {c.oneshot.p_uncond}")
  require(c.oneshot.p_uncond > 0, "oneshot.p_uncond",
          "must be > 0: the null label ('from nothing') is only trained through label dropout")
  require(c.sample.num_samples >= 2, "sample.num_samples", "must be >= 2")
  require(c.sample.per_class >= 1, "sample.per_class", "must be >= 1")
  experiment_helpers.check_specs(build.build("oneshot", c.oneshot, data), [c.sample.oneshot],
                                 "sample.oneshot")
  experiment_helpers.check_specs(build.build("raster", c.ar, data, c.dtype), [c.sample.raster],
                                 "sample.raster", guidance=Guidance(c.sample.guidance))


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  levels, C, L = data.num_levels, data.num_classes, data.num_tokens
  quality = SampleQuality.for_experiment(c, workdir, data)
  n, k = c.sample.num_samples, c.sample.per_class
  key = jax.random.key(c.seed)
  labels = np.arange(n) % C
  null = np.full((n,), C, np.int32)

  # Closed-form MSE optima on the train split (float, [-1, 1]): what the one-shot net can learn.
  x_unit = np.asarray(levels_to_unit(data.x_train, levels), np.float64)
  class_means = np.stack([x_unit[data.y_train == i].mean(0) for i in range(C)])
  data_mean = x_unit.mean(0)

  def measure(setting: str, nfe: int, uncond: np.ndarray | None, cond: np.ndarray | None):
    """fd on the unconditional samples; accuracy on the class-conditional ones (labels);
    pixel statistics on whichever is the row's sample set (cond if given)."""
    shown = cond if cond is not None else uncond
    row = {"setting": setting, "NFE": nfe,
           "fd": quality.frechet(uncond if uncond is not None else cond)}
    if cond is not None:
      row["accuracy"] = quality.accuracy(cond, labels)
    row["sharpness"] = sharpness(levels_to_unit(shown, levels))
    row["pixel_entropy"] = pixel_entropy(shown, levels)
    return row

  rows = [{"setting": "data (fd: train split vs test = floor; pixels: test split)", "NFE": 0,
           "fd": quality.floor(n), "accuracy": quality.test_accuracy(),
           "sharpness": sharpness(levels_to_unit(data.x_test, levels)),
           "pixel_entropy": pixel_entropy(data.x_test, levels)}]

  oneshot, os_params = model_cache.train_model(
      "oneshot", c, workdir, data, c.oneshot, c.oneshot_train)
  nfe_oneshot = oneshot.nfe(c.sample.oneshot)
  pred_null = np.asarray(oneshot.predict(os_params, null))  # [-1, 1], before rounding
  pred_cond = np.asarray(oneshot.predict(os_params, labels))
  row = measure("one-shot MSE, from nothing (null label)", nfe_oneshot,
                np.asarray(oneshot.sample(os_params, key, null, c.sample.oneshot)), None)
  row["rmse_to_closed_form_mean"] = float(np.sqrt(np.mean((pred_null[0] - data_mean) ** 2)))
  rows.append(row)
  row = measure("one-shot MSE, from the class label", nfe_oneshot, None,
                np.asarray(oneshot.sample(os_params, key, labels, c.sample.oneshot)))
  row["rmse_to_closed_form_mean"] = float(np.sqrt(np.mean((pred_cond - class_means[labels]) ** 2)))
  rows.append(row)

  raster, raster_params = model_cache.train_model("raster", c, workdir, data, c.ar, c.train)
  guidance = Guidance(c.sample.guidance)
  sample_ar = lambda y: np.asarray(raster.sample(  # noqa: E731
      raster_params, key, np.asarray(y, np.int32), c.sample.raster, guidance=guidance))
  ar_uncond = np.asarray(raster.sample(raster_params, key, null, c.sample.raster))
  rows.append(measure("raster AR, unconditional", raster.nfe(c.sample.raster), ar_uncond, None))
  rows.append(measure(f"raster AR, from the class label (w={c.sample.guidance:g})",
                      raster.nfe(c.sample.raster, guidance=guidance), None, sample_ar(labels)))

  # One row per class: k test digits | k from nothing | k from the class | k raster AR samples.
  per = np.repeat(np.arange(C), k)
  real = np.stack([data.x_test[data.y_test == i][:k] for i in range(C)])
  blocks = [real,
            np.asarray(oneshot.sample(os_params, key, np.full(C * k, C), c.sample.oneshot))
            .reshape(C, k, *data.shape),
            np.asarray(oneshot.sample(os_params, key, per, c.sample.oneshot))
            .reshape(C, k, *data.shape),
            sample_ar(per).reshape(C, k, *data.shape)]
  gap = np.zeros((C, 1, *data.shape), np.uint8)
  grid = np.concatenate([b for block in blocks for b in (block, gap)][:-1], axis=1)
  plots.image_grid(grid.reshape(-1, *data.shape), os.path.join(workdir, "samples.png"),
                   nrow=grid.shape[1], row_labels=[str(i) for i in range(C)], vmax=levels - 1,
                   title=f"Per class, {k} each: data | one-shot from nothing | "
                         "one-shot from the class | raster AR (1 pixel/step)", close=True)

  notes = (f"{data.description}. One-shot: an MLP (width {c.oneshot.width}, "
           f"depth {c.oneshot.depth}) from a label embedding to all {L} pixels at once, "
           f"trained with MSE for {c.oneshot_train.steps} steps of batch "
           f"{c.oneshot_train.batch_size}; labels dropped to the null label with probability "
           f"{c.oneshot.p_uncond:g}, so one network answers 'from nothing' (null label) and "
           "'from the class'. It is deterministic: every sample with the same label is the same "
           "image. rmse_to_closed_form_mean: RMS difference (in [-1, 1] units) between its "
           "prediction and the exact train-split data mean / class means, the MSE optimum. "
           f"Raster AR: the digits_ar.py model (width {c.ar.width}, depth {c.ar.depth}, "
           f"{c.train.steps} steps of batch {c.train.batch_size}), one pixel per step. "
           f"fd: Fréchet distance of {n} samples to the test split on the digit classifier's "
           "features (data row: train split vs test, the floor; class-conditional rows: the "
           "class-conditional samples, labels cycling through the classes). accuracy: the "
           "classifier's accuracy on class-conditional samples (data row: on the test split). "
           "sharpness: mean |4-neighbour Laplacian| in [-1, 1] units (blur lowers it). "
           "pixel_entropy: entropy in bits of the grey-level histogram (max log2 17 = 4.09; "
           "crisp digits use mostly the extreme levels). Pixel statistics of each row are of "
           "its own sample set; one-shot samples are rounded to the 17 levels like AR samples.")
  write_results(workdir, rows, "Blurry mean: one-shot regression vs one pixel at a time", notes)
  return rows
