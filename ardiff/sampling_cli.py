"""`ardiff sample`: draw samples from a trained model without rerunning its experiment.

Finds the model (a directory with model.json, or the one model of a work dir), rebuilds its
process from model.json (`ardiff.model_cache.load_process`), checks the spec and labels against
it, then restores its parameters (`load_params`), samples through the common contract, and
writes FILE.npz (samples, labels, spec) and FILE.png beside it: an image grid, or a scatter plot
for 2-D points. Every bad input (no model, several models, a spec the process does not have or
more steps than it was trained with, a label out of range, an output path that exists as a
directory) is a ConfigError: one line, exit 2, before the checkpoint is read.
"""

from __future__ import annotations

import contextlib
import os
import sys

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


def sample_command(args) -> int:
  import jax

  from ardiff.processes.guidance import make_guidance
  from ardiff.processes.spec import parse_spec
  from ardiff.model_cache import load_params, load_process

  if args.num < 1:
    raise ConfigError(f"--num must be >= 1, got {args.num}")
  if not args.out.endswith(".npz"):
    raise ConfigError(f"--out must name a .npz file, got {args.out!r}")
  if os.path.isdir(args.out):
    raise ConfigError(f"--out {args.out!r} is a directory")
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
    label = process.num_classes if args.label is None else args.label
    if _p_uncond(card) == 0 and (label == process.num_classes or guidance is not None):
      raise ValueError("this model was trained with p_uncond=0, so its null label (used by "
                       "unconditional samples and by --guidance) was never trained; give "
                       "--label without --guidance")
    if not 0 <= label <= process.num_classes:
      raise ValueError(f"--label must lie in 0..{process.num_classes - 1} (or be left out for "
                       f"unconditional samples), got {label}")
    labels = np.full((args.num,), label, np.int32)
    nfe = process.nfe(args.spec, guidance=guidance)  # the spec against this model, up front
    params, step = load_params(model_dir)
    samples = np.asarray(process.sample(params, jax.random.key(args.seed), labels, args.spec,
                                        guidance=guidance))
  except ArdiffError:  # already one line naming its file or key
    raise
  except ValueError as e:
    raise ConfigError(str(e)) from None
  png = args.out[:-len(".npz")] + ".png"
  stop = getattr(args, "sigterm", None)  # `ardiff.sigterm`: a SIGTERM now waits for the files
  with stop.writing([args.out, png]) if stop else contextlib.nullcontext():
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out[:-len(".npz")] + ".tmp.npz"
    np.savez(tmp, samples=samples, labels=labels, spec=np.array(args.spec))
    os.replace(tmp, args.out)
    _figure(samples, card, f"{args.spec}, {nfe} NFE" + (f", label {label}"
                                                        if args.label is not None else ""), png)
  print(f"{len(samples)} samples from {model_dir} (step {step}, {args.spec}, {nfe} NFE) "
        f"-> {args.out}, {png}", file=sys.stderr)
  return 0


def _p_uncond(card: dict) -> float | None:
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
