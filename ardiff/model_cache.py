"""The model cache: cached training, model cards and loading, and what each process trains on.

    process, params = train_model("raster", config, workdir, dataset, config.ar, config.train)

trains (or resumes, or restores) the process that `ardiff.build` makes from the sections, in a
directory keyed by a hash of everything that defines the model, and returns its EMA
parameters.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import build, checkpoints, console, storage
from ardiff.configs.overrides import config_hash
from ardiff.configs.validation import ConfigError
from ardiff.data.base import Dataset
from ardiff.data.levels import levels_to_unit, to_tokens
from ardiff.errors import DataError
from ardiff.train import (TrainConfig, TrainState, later_field_defaults, outside_model_key,
                          read_training_info, train)


def model_dir(config: ml_collections.ConfigDict, workdir: str, name: str, *sections: Any,
              version: int = 1) -> str:
  """Where a model trained with these config sections lives.

  Keyed by a hash of the sections, so experiments that train the same model share it and
  re-plotting never retrains. `config.model_cache` (if set) is a directory shared across
  experiments, relative to the work dir unless absolute (the digits experiments use
  "../models", i.e. runs/models beside runs/<experiment>); otherwise `workdir/models`.
  A compute dtype other than float32 (`config.dtype`) is part of the key: a bfloat16 model is a
  different model. float32 adds nothing, so caches made before the switch existed stay valid.
  The builder's code `version` is part of the key too (version 1 adds nothing, for the same
  reason): a change to a network's maths bumps it, and the old model is not loaded.
  A section made by `train_key` leaves out fields that do not change the model; if no directory
  exists under the key without them but one exists under the key with them (a model cached
  before), that one is returned and used where it is.
  """
  dtype = config.get("dtype", "float32")
  if dtype != "float32":
    sections = (*sections, {"dtype": dtype})
  if version != 1:
    sections = (*sections, {"code_version": version})
  root = storage.normpath(storage.join(workdir, config.get("model_cache") or "models"))
  directory = os.path.join(root, f"{name}-{config_hash(*sections)}")
  legacy = tuple(s.legacy if isinstance(s, TrainKey) else s for s in sections)
  if not storage.isdir(directory) and any(isinstance(s, TrainKey) for s in sections):
    # A model cached before `train_key` left the loop-only fields out: reuse it where it is.
    old = os.path.join(root, f"{name}-{config_hash(*legacy)}")
    if old != directory and storage.isdir(old):
      return old
  return directory


def train_cached(process, x: np.ndarray, y: np.ndarray, train_cfg: ml_collections.ConfigDict,
                 directory: str, **kwargs) -> TrainState:
  """Train, resume, or restore a finished run in `directory` (see ardiff.train.train)."""
  return train(process, x, y, TrainConfig.from_config(train_cfg), directory, **kwargs)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  process: Any
  params: Any  # EMA parameters (with validation: the best ones)
  directory: str
  info: dict  # training.json: flops_per_step, steps, best_step, stopped_early_at, wall_seconds

  @property
  def flops(self) -> float | None:
    """Training compute spent: FLOPs per step x steps trained."""
    per_step = self.info.get("flops_per_step")
    return per_step * self.info["step"] if per_step and "step" in self.info else None


class TrainKey(dict):
  """A train section as it enters a model's key, remembering the key such a model had before
  (`legacy`), so that `model_dir` finds models cached under it."""

  def __init__(self, values: dict, legacy: dict):
    super().__init__(values)
    self.legacy = legacy


def train_key(train_cfg, *, keep_steps: bool = False) -> TrainKey:
  """The train section as it enters a model's cache key: the fields that say so in
  `TrainConfig` are left out (`ardiff.train.config`: fields that cannot change a model's
  parameters at a given step, and `steps`, the budget; `keep_steps` keeps `steps`, for
  experiments that train one model at several budgets and need each kept, and so do snapshots,
  which are fractions of it), and fields added later at the defaults that train as before
  (`later_field_defaults`), so older models stay valid.

  Models cached before the loop-only fields left the key are found under their old key
  (`TrainKey.legacy`, see `model_dir`) when rerun with the same config; after a change to a
  loop-only field such a model is retrained once.
  """
  values = _plain(train_cfg)
  later = later_field_defaults()
  legacy = {k: v for k, v in values.items() if not (k in later and _same(v, later[k]))}
  keep = {"steps"} if keep_steps or values.get("snapshots") else set()
  left_out = outside_model_key() - keep
  return TrainKey({k: v for k, v in legacy.items() if k not in left_out}, legacy)


def _same(a, b) -> bool:
  return (list(a) == list(b)) if isinstance(b, tuple) else a == b


def fit_model(kind: str, config: ml_collections.ConfigDict, workdir: str, dataset: Dataset,
              model_cfg: ml_collections.ConfigDict, train_cfg: ml_collections.ConfigDict,
              *, key_sections: tuple = (), key_after_train: tuple = (), keep_steps: bool = False,
              name: str | None = None, process=None, train_kwargs: dict | None = None,
              **build_extra) -> TrainedModel:
  """Build process `kind` from `model_cfg` (ardiff.build), train or restore it on the dataset's
  train split (`fit_cached`), and return it with its EMA parameters, directory and training
  record.

  The cache key is (dataset name, model section, extra build sections, train section, builder
  version, dtype); `key_sections` replaces (dataset name, model section, extras) where an
  experiment keyed its models differently before (so its cached models stay valid);
  `key_after_train` and `keep_steps` as in `fit_cached`. `process`: the process these sections
  build, built already (models of several training seeds then share one process object, and
  its compiled samplers). `train_kwargs` go to the training loop (e.g. eval_fn, eval_every).
  """
  if process is None:
    process = build.build(kind, model_cfg, dataset, config.get("dtype", "float32"),
                          **build_extra)
  # remat and the attention kernels leave the trained model as it is: not in the key.
  model_key = {k: v for k, v in model_cfg.items() if k not in build.COMPUTE_ONLY_FIELDS}
  name = name or f"{dataset.name}-{kind}"
  key = key_sections or (dataset.name, model_key, *build_extra.values())
  card = dict(kind=kind, model_cfg=model_cfg, build_extra=build_extra)
  return fit_cached(process, config, workdir, dataset, train_cfg, name=name, key=key,
                    inputs=model_inputs(process, dataset), key_after_train=key_after_train,
                    keep_steps=keep_steps, version=build.code_version(kind, dataset), card=card,
                    preview_fn=preview_sampler(process, kind, dataset), **(train_kwargs or {}))


def fit_cached(process, config: ml_collections.ConfigDict, workdir: str, dataset: Dataset,
               train_cfg: ml_collections.ConfigDict, *, name: str, key: tuple, inputs,
               key_after_train: tuple = (), keep_steps: bool = False, version: int = 1,
               card: dict | None = None, **train_kwargs) -> TrainedModel:
  """The one cached-training path: train (or resume, or restore) `process` on `inputs` and the
  dataset's train labels in

      model_dir(config, workdir, name, *key, train_key(train_cfg), *key_after_train, version)

  and return it with its EMA parameters, directory and training record. `key`: the sections
  that define the model; `key_after_train`: further parts (e.g. an evaluation schedule whose
  records the run keeps), after the train section so that keys made in that order stay valid;
  `keep_steps`: the budget is part of the key (`train_key`). `card`: kind, model_cfg and
  build_extra of a registered process, written as model.json so `ardiff sample` can load it
  (None for a process `ardiff.build` does not make).
  """
  directory = model_dir(config, workdir, name, *key, train_key(train_cfg, keep_steps=keep_steps),
                        *key_after_train, version=version)
  if card is not None:
    write_model_card(directory, card["kind"], card["model_cfg"], dataset,
                     config.get("dtype", "float32"), card["build_extra"])
  state = train_cached(process, inputs, dataset.y_train, train_cfg, directory, **train_kwargs)
  return TrainedModel(process, state.ema_params, directory, read_training_info(directory))


def preview_sampler(process, kind: str, dataset: Dataset, num: int = 16, seed: int = 0):
  """ema_params -> `num` unconditional samples by the builder's preview spec (the grids shown
  in TensorBoard while training, `train.preview_every`); None for points or no spec. The same
  key at every call, so successive grids differ only through the parameters."""
  spec = build.preview_spec(kind, process)
  if dataset.kind != "image" or not spec:
    return None
  labels = jnp.full((num,), process.num_classes, jnp.int32)
  key = jax.random.key(seed)
  return lambda params: process.sample(params, key, labels, spec)


def train_model(*args, **kwargs):
  """`fit_model`, returning (process, EMA params)."""
  model = fit_model(*args, **kwargs)
  return model.process, model.params


MODEL_CARD = "model.json"
CARD_KEYS = ("kind", "model", "data", "dtype", "extra")  # what `write_model_card` writes


def write_model_card(directory: str, kind: str, model_cfg, dataset: Dataset, dtype: str,
                     build_extra: dict) -> None:
  """model.json beside the checkpoints: what `load_model` needs to rebuild the process."""
  card = {"kind": kind, "model": _plain(model_cfg), "data": dataset.spec.to_dict(),
          "dtype": dtype, "extra": {k: _plain(v) for k, v in build_extra.items()}}
  storage.makedirs(directory)
  # atomic: a reader never sees half a card
  storage.write_atomic(storage.join(directory, MODEL_CARD),
                       json.dumps(card, indent=2, sort_keys=True))


def _plain(section):
  return section.to_dict() if isinstance(section, ml_collections.ConfigDict) else section


def load_model(directory: str):
  """(process, EMA params, card) of a trained model directory (one with model.json)."""
  process, card = load_process(directory)
  params, step = load_params(directory)
  return process, params, dict(card, step=step)


def load_process(directory: str):
  """(process, card) of a model directory, from its model.json alone: no parameters are read,
  so a sampling setting can be checked against the model before its checkpoint is."""
  from ardiff.data.base import DataSpec

  path = storage.join(directory, MODEL_CARD)
  card = storage.read_json(path)
  missing = [k for k in CARD_KEYS if k not in card] if isinstance(card, dict) else CARD_KEYS
  if missing:
    raise DataError(f"{path} is not a model card: it lacks {', '.join(missing)}")
  extra = {k: ml_collections.ConfigDict(v) if isinstance(v, dict) else v
           for k, v in card["extra"].items()}
  process = build.build(card["kind"], ml_collections.ConfigDict(card["model"]),
                        DataSpec.from_dict(card["data"]), card["dtype"], **extra)
  return process, card


def load_params(directory: str):
  """(EMA params, step) of the newest intact checkpoint of a model directory."""
  import orbax.checkpoint as ocp

  ckpt = storage.join(storage.absolute(directory), "checkpoints")
  with ocp.CheckpointManager(ckpt) as manager:
    # A reader: damaged steps are reported and skipped, never moved (a run may be training).
    state, step = checkpoints.restore_latest(
        manager, None, console.log, move=False)
    if step is None:
      raise ConfigError(f"model directory {directory!r} has no checkpoint yet")
  return state["ema_params"], int(step)


def find_models(path: str) -> list[str]:
  """Model directories (with model.json) at `path`: the path itself, or those of a work dir
  (its models/ or the shared cache its config.json names)."""
  if storage.isfile(storage.join(path, MODEL_CARD)):
    return [path]
  roots = [storage.join(path, "models")]
  config = storage.join(path, "config.json")
  if storage.isfile(config):
    settings = storage.read_json(config)
    cache = settings.get("model_cache") if isinstance(settings, dict) else None
    if cache:
      roots.append(storage.normpath(storage.join(path, cache)))
  found = []
  for root in roots:
    if storage.isdir(root):
      found += sorted(storage.join(root, d) for d in storage.listdir(root)
                      if storage.isfile(storage.join(root, d, MODEL_CARD)))
  return found


def model_inputs(process, dataset: Dataset) -> np.ndarray:
  """The training inputs of a process (`process_inputs` of the train split)."""
  return process_inputs(process, dataset.x_train, dataset)


def process_inputs(process, x: np.ndarray, dataset: Dataset) -> np.ndarray:
  """Data-space examples `x` of `dataset` as the process takes them, by the input kind it
  declares (`process.inputs`): tokens for "tokens" (AR, masked diffusion), [-1, 1] floats for
  "continuous" (image diffusion, one-shot regression), the points themselves for 2-D data."""
  if dataset.kind != "image":
    return x
  if process.inputs == "tokens":
    return to_tokens(x)
  return levels_to_unit(x, dataset.num_levels)
