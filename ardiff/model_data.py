"""The data a trained model was trained on, rebuilt so that `ardiff eval` can score the model
against its own held-out split.

A model card (model.json) records the data's spec (name, kind, shape, classes, levels; for
points also the train split's mean and spread), not how its arrays were made. The work dir's
config.json records that, in the keys the experiments read: `dataset` and `data.path` for
images (`presets.config_dataset`), `data` and `seed` for points (`presets.points_dataset`),
at the top of the config or in a section of it (ddpm_vs_ddim's `spiral`). Each description
found is rebuilt and the first whose spec equals the card's is the model's data, so a model
is never scored against a split other than its own (a spiral's spec holds its train split's
mean and spread, and an .npz file's name holds a hash of its bytes). Without a config.json
(a model directory of a shared cache given on its own), an image dataset the card names and
that takes no settings (digits, mnist, ...) is loaded as the image experiments load it.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

import ml_collections

from ardiff import storage
from ardiff.configs import ConfigError
from ardiff.data import DataSpec, Dataset
from ardiff.presets import config_dataset, points_dataset

CONFIG = "config.json"
SPIRAL_KEYS = ("num_train", "num_test", "num_classes", "noise")


def work_dir_config(path: str, model_dir: str) -> tuple[dict | None, str | None]:
  """(config, its file) of the work dir `path` (as the user gave it), else of the work dir
  whose models/ holds `model_dir`; (None, None) when neither has a config.json."""
  for folder in (path, os.path.dirname(os.path.dirname(os.path.normpath(model_dir)))):
    file = storage.join(folder, CONFIG)
    if folder and storage.isfile(file):
      try:
        return json.loads(storage.read_text(file)), file
      except json.JSONDecodeError as e:
        raise ConfigError(f"{file} is not valid JSON ({e})") from None
  return None, None


def trained_dataset(card: dict, config: dict | None, config_file: str | None,
                    model_dir: str) -> Dataset:
  """The dataset whose spec is the card's, rebuilt from the config (see the module doc)."""
  want = DataSpec.from_dict(card["data"])
  for section in _sections(config, want.kind):
    data = _rebuild(section, want.kind)
    if data.spec == want:
      return data
  if config is None and want.kind == "image":
    data = config_dataset(ml_collections.ConfigDict({"dataset": want.name, "data": {}}))
    if data.spec == want:
      return data
  where = (f"{config_file} describes no dataset with its spec" if config_file else
           "no config.json beside it says how its data was made; give the work dir whose run "
           "trained it")
  raise ConfigError(f"cannot rebuild the {want.kind} data that the model in {model_dir!r} was "
                    f"trained on ({want.name}, {want.num_classes} classes): {where}")


def _sections(config: dict | None, kind: str) -> Iterator[ml_collections.ConfigDict]:
  """The config and each section of it (at any depth) that describes data of `kind`."""
  if not isinstance(config, dict):
    return
  data = config.get("data")
  if isinstance(data, dict):
    if kind == "image" and isinstance(config.get("dataset"), str):
      yield ml_collections.ConfigDict(config)
    if kind == "points" and (data.get("path") or all(k in data for k in SPIRAL_KEYS)):
      yield ml_collections.ConfigDict(dict(config, seed=config.get("seed", 0)))
  for value in config.values():
    yield from _sections(value, kind)


def _rebuild(section: ml_collections.ConfigDict, kind: str) -> Dataset:
  return config_dataset(section) if kind == "image" else points_dataset(section)
