"""The dataset an experiment's config names: `dataset` (a registered name) and, for
`dataset=npz`, the file `data.path` (README "Your own data").

    spec = config_data_spec(c, kind="image")   # validation: checks the keys and the data
    data = config_dataset(c)                   # run: the arrays
    points = points_dataset(c)                 # the spiral's points (a file, or the spiral)

Errors name the config key (ConfigError) or the file and field (DataError).
"""

from __future__ import annotations

import ml_collections

from ardiff.configs.validation import ConfigError, require, require_choice
from ardiff.data import DATASETS, DataSpec, Dataset, data_spec, load_dataset
from ardiff.data.checks import check_batch

KINDS = {"image": ("digits", "digits_independent", "mnist", "cifar10", "npz"),
         "points": ("spiral", "npz")}


def data_kwargs(c: ml_collections.ConfigDict) -> dict:
  """Keyword arguments of `load_dataset(c.dataset, ...)`: the path for npz, nothing otherwise."""
  return {"path": c.data.path} if c.dataset == "npz" else {}


def check_dataset_keys(c: ml_collections.ConfigDict, kind: str) -> None:
  """`dataset` is a dataset of `kind`; `data.path` is given exactly when dataset=npz."""
  require_choice(c.dataset, "dataset", [n for n in KINDS[kind] if n in DATASETS])
  path = c.get("data", {}).get("path", "")
  if c.dataset == "npz":
    require(bool(path), "data.path", "dataset=npz reads a file: add --config.data.path=FILE.npz")
  else:
    require(not path, "data.path", f"is read only with dataset=npz (dataset is "
            f"{c.dataset!r}): add --config.dataset=npz, or drop data.path")


def config_data_spec(c: ml_collections.ConfigDict, kind: str) -> DataSpec:
  """Check the dataset keys and the data (a file is loaded and checked; so is any dataset that
  is cheap to load), and that a training batch fits in the training split; the DataSpec.

  Datasets whose spec is known without reading them (mnist, cifar10) are not loaded here."""
  check_dataset_keys(c, kind)
  if c.dataset in ("mnist", "cifar10"):
    return data_spec(c.dataset)
  data = config_dataset(c)
  if data.kind != kind:
    example = "images [N, H, W, C]" if kind == "image" else "points [N, D]"
    raise ConfigError(f"config key 'data.path': {c.data.path} holds {data.kind} of shape "
                      f"{data.shape}; this experiment needs {example}")
  check_batch(f"dataset {data.name!r}" if c.dataset != "npz" else f"data file {c.data.path}",
              len(data.x_train), c.train.batch_size)
  return data.spec


def config_dataset(c: ml_collections.ConfigDict) -> Dataset:
  """The dataset the config names (call `config_data_spec` first, in validation)."""
  return load_dataset(c.dataset, **data_kwargs(c))


def points_dataset(c: ml_collections.ConfigDict, num_test: int | None = None) -> Dataset:
  """The 2-D points a spiral config names: the file `data.path` (a tenth held out, split by
  `seed`), else the spiral of `data.num_train/num_test/num_classes/noise` drawn from `seed`.
  `num_test` replaces the held-out size (validation draws one point)."""
  if c.data.path:  # a DataError names the file and field
    return load_dataset("npz", path=c.data.path, seed=c.seed)
  d = c.data
  return load_dataset("spiral", num_train=d.num_train, num_test=num_test or d.num_test,
                      num_classes=d.num_classes, noise=d.noise, seed=c.seed)
