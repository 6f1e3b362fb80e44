"""`ardiff eval`: score a trained model's samples against its held-out split, beside the floor.

Loads the model as `ardiff sample` does (`sampling_cli.load`: a model directory or the one
model of a work dir), rebuilds the data it was trained on from the work dir's config.json
(`ardiff.model_data`, checked against the model card), draws --num samples (default: as many
as the held-out split) with the same flags as `sample`, and prints the experiment's metrics
(`ardiff.evaluation`) as a markdown table on stdout, what was scored on stderr. Nothing is
written, except the digit classifier's cache when an image model is scored for the first time
(beside the models, where the experiments keep it).

A subcommand rather than `sample --eval`: it writes no samples (no --out), and its --num
defaults to the held-out split's size, the size the floor is computed for.
"""

from __future__ import annotations

import os
import sys

import ml_collections

from ardiff import evaluation, model_data, sampling_cli
from ardiff.configs import ConfigError

MIN_SAMPLES = 4  # k-NN precision and recall need k + 1 = 4 samples; the others 2


def eval_command(args) -> int:
  import jax

  if args.num is not None and args.num < MIN_SAMPLES:
    raise ConfigError(f"--num must be >= {MIN_SAMPLES} (the metrics compare sets of samples), "
                      f"got {args.num}")
  model = sampling_cli.load(args)
  config, config_file = model_data.work_dir_config(args.path, model.directory)
  data = model_data.trained_dataset(model.card, config, config_file, model.directory)
  num = args.num or len(data.x_test)
  labels, nfe = sampling_cli.sample_labels(model, args, num)
  model = sampling_cli.with_params(model)
  quality = _quality(data, config, config_file, model.directory)  # before the long part
  samples = sampling_cli.draw(model, args, labels)
  if quality is None:
    rows = evaluation.point_rows(samples, data)
  else:
    rows = evaluation.image_rows(samples, quality)
  # Held-out bits are unconditional: meaningless where the null label was never trained.
  bits = None if sampling_cli.trained_p_uncond(model.card) == 0 else evaluation.bits_row(
      model.card["kind"], model.process, model.params, data, jax.random.key(args.seed))
  print(f"{num} samples from {model.directory} (step {model.card['step']}, {args.spec}, {nfe} "
        f"NFE{sampling_cli.labels_note(model, args)}) against the {len(data.x_test)} held-out "
        f"examples of {data.name}; floor: as many training examples", file=sys.stderr)
  print(evaluation.table(rows + ([bits] if bits else [])))
  return 0


def _quality(data, config: dict | None, config_file: str | None, model_dir: str):
  """The experiments' image metric (None for points): the classifier their config names,
  cached where they cache it; without a config, the image presets' classifier, cached beside
  the model."""
  if data.kind != "image":
    return None
  from ardiff.metrics.sample_quality import SampleQuality
  from ardiff.presets import image_config

  if config is not None and "classifier_steps" in config and "model_cache" in config:
    return SampleQuality.for_experiment(ml_collections.ConfigDict(config),
                                        os.path.dirname(config_file), data)
  steps = image_config("mnist" if data.name == "mnist" else "small").classifier_steps
  return SampleQuality.create(data, cache_dir=os.path.dirname(os.path.normpath(model_dir)),
                              steps=steps)
