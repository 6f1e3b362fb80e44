"""`ardiff sample`: draw samples from a trained model without rerunning its experiment.

Finds the model (a directory with model.json, or the one model of a work dir), rebuilds its
process from model.json (`ardiff.model_cache.load_process`), checks the spec and labels against
it, then restores its parameters (`with_params`), samples through the common contract, and
writes FILE.npz (samples, labels, spec) and FILE.png beside it: an image grid, or a scatter plot
for 2-D points. Every bad input (no model, several models, a spec the process does not have or
more steps than it was trained with, a label out of range, an output path that exists as a
directory) is a ConfigError: one line, exit 2, before the checkpoint is read.
`load`, `sample_labels`, `with_params` and `draw` serve `ardiff eval` too (`ardiff.eval_cli`).

Labels: --label for every sample, else the null label (unconditional), except that --guidance
without --label guides each sample towards a class drawn at random (`sample_labels`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any

import numpy as np

from ardiff.configs import ConfigError
from ardiff.errors import ArdiffError


def _pick_model(path: str) -> str:
  from ardiff import storage
  from ardiff.model_cache import find_models

  if not storage.exists(path):
    raise ConfigError(f"{path!r} does not exist (give a model directory or a work dir)")
  models = find_models(path)
  if not models:
    raise ConfigError(f"no trained model (model.json) in {path!r} or its models/; run the "
                      "experiment first, or give the model directory itself")
  if len(models) > 1:
    raise ConfigError(f"{path!r} holds {len(models)} models; give one of them: "
                      + ", ".join(models))
  return models[0]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A trained model picked and loaded for `ardiff sample` and `ardiff eval`."""

  directory: str
  process: Any
  params: Any  # None until `with_params`
  card: dict  # model.json, with the checkpoint's step once `with_params` read it
  guidance: Any  # processes.guidance.Guidance, or None


def sample_command(args) -> int:
  if args.num < 1:
    raise ConfigError(f"--num must be >= 1, got {args.num}")
  if not args.out.endswith(".npz"):
    raise ConfigError(f"--out must name a .npz file, got {args.out!r}")
  if os.path.isdir(args.out):
    raise ConfigError(f"--out {args.out!r} is a directory")
  model = load(args)
  labels, nfe = sample_labels(model, args, args.num)
  model = with_params(model)
  samples = draw(model, args, labels)
  png = args.out[:-len(".npz")] + ".png"
  stop = getattr(args, "sigterm", None)  # `ardiff.sigterm`: a SIGTERM now waits for the files
  with stop.writing([args.out, png]) if stop else contextlib.nullcontext():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out[:-len(".npz")] + ".tmp.npz"
    np.savez(tmp, samples=samples, labels=labels, spec=np.array(args.spec))
    os.replace(tmp, args.out)
    _figure(samples, model.card, f"{args.spec}, {nfe} NFE" + (
        f", label {args.label}" if args.label is not None else ""), png)
  print(f"{len(samples)} samples from {model.directory} (step {model.card['step']}, {args.spec}, "
        f"{nfe} NFE{labels_note(model, args)}) -> {args.out}, {png}", file=sys.stderr)
  return 0


def load(args) -> LoadedModel:
  """Check --spec's grammar and the guidance flags, then pick the model and rebuild its process
  from model.json (its parameters are read later, by `with_params`)."""
  from ardiff.processes.guidance import make_guidance
  from ardiff.processes.spec import parse_spec
  from ardiff.model_cache import load_process

  try:  # what can be checked without the model, before it is loaded
    parse_spec(args.spec)
  except ValueError as e:
    raise ConfigError(f"--spec: {e}") from None
  try:
    guidance = make_guidance(args.guidance, args.negative)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  model_dir = _pick_model(args.path)
  try:
    process, card = load_process(model_dir)  # the model's settings, not yet its parameters
  except ArdiffError:  # already one line naming its file or key
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return LoadedModel(model_dir, process, None, card, guidance)


def with_params(model: LoadedModel) -> LoadedModel:
  """The model with its EMA parameters from the newest intact checkpoint, and that step."""
  from ardiff.model_cache import load_params

  try:
    params, step = load_params(model.directory)
  except ArdiffError:
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return dataclasses.replace(model, params=params, card=dict(model.card, step=step))


def guides_random_classes(args) -> bool:
  """--guidance without --label (and without --negative) guides each sample towards a class
  drawn at random: guided against the null label, the null label itself would be the
  unconditional model at twice the NFE (out = u + w (u - u))."""
  return args.label is None and args.guidance is not None and args.negative is None


def sample_labels(model: LoadedModel, args, num: int) -> tuple[np.ndarray, int]:
  """(int32 labels [num], NFE) for the flags, checked against the model and the spec.

  --label: every sample of that class. No --label: the null label (unconditional samples;
  with --negative and --guidance, steered away from that class), except under --guidance
  alone (`guides_random_classes`): classes drawn uniformly from --seed, one per sample, as
  class-conditional models are sampled with classifier-free guidance for FID (ADM, DiT)."""
  num_classes = model.process.num_classes
  if guides_random_classes(args):
    labels = np.random.default_rng(args.seed).integers(0, num_classes, num).astype(np.int32)
  else:
    labels = np.full((num,), num_classes if args.label is None else args.label, np.int32)
  try:
    if trained_p_uncond(model.card) == 0 and ((labels == num_classes).any()
                                       or model.guidance is not None):
      raise ValueError("this model was trained with p_uncond=0, so its null label (used by "
                       "unconditional samples and by --guidance) was never trained; give "
                       "--label without --guidance")
    if args.label is not None and not 0 <= args.label <= num_classes:
      raise ValueError(f"--label must lie in 0..{num_classes - 1} (or be left out for "
                       f"unconditional samples), got {args.label}")
    return labels, model.process.nfe(args.spec, guidance=model.guidance)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def labels_note(model: LoadedModel, args) -> str:
  """What the summary line says about labels drawn at random (empty otherwise)."""
  if not guides_random_classes(args):
    return ""
  return f", classes drawn uniformly from 0..{model.process.num_classes - 1}"


def draw(model: LoadedModel, args, labels: np.ndarray) -> np.ndarray:
  """Samples in data space, from key --seed."""
  import jax

  try:
    return np.asarray(model.process.sample(model.params, jax.random.key(args.seed), labels,
                                           args.spec, guidance=model.guidance))
  except ValueError as e:
    raise ConfigError(str(e)) from None


def trained_p_uncond(card: dict) -> float | None:
  """The label-dropout rate the model was trained with (the diffusion section's, else the
  model section's), None where it has none."""
  section = card.get("extra", {}).get("diffusion") or card.get("model", {})
  return section.get("p_uncond")


def _figure(samples: np.ndarray, card: dict, title: str, path: str) -> None:
  import matplotlib.pyplot as plt

  from ardiff.report import plots

  if card["data"]["kind"] == "image":
    fig = plots.image_grid(samples[:100], path, nrow=min(10, len(samples)),
                           vmax=card["data"]["num_levels"] - 1, title=title)
  else:
    fig = plots.scatter_panels([(title, samples, None)], path, title=card["data"]["name"])
  plt.close(fig)
