"""MNIST and CIFAR-10 from tensorflow-datasets, read with `tfds.data_source` (no TensorFlow needed).

Nothing is downloaded at run time: the dataset must already be prepared, in the random-access
ArrayRecord format, under `data_dir` (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).
Preparing needs network and TensorFlow, so do it once where both are available:

  pip install tensorflow tensorflow-datasets
  tfds build mnist --file_format=array_record --data_dir=DIR

then copy DIR/mnist to the machine that trains and point `data_dir` (or TFDS_DATA_DIR) at it.

Multi-host: process p of P keeps the train examples i (in the split's stored order) with
i % P == p, so the P shards are disjoint, cover the split and differ in size by at most one.
Every process keeps the whole test split, so evaluation sees the same data everywhere.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from ardiff import console
from ardiff.data.base import Dataset
from ardiff.errors import DataError, DataNotFound


@dataclasses.dataclass(frozen=True)
class _Spec:
  shape: tuple[int, int, int]
  num_levels: int
  num_classes: int


SPECS: dict[str, _Spec] = {
    "mnist": _Spec(shape=(28, 28, 1), num_levels=256, num_classes=10),
    "cifar10": _Spec(shape=(32, 32, 3), num_levels=256, num_classes=10),
}


def _check_args(name: str, process_index: int, process_count: int,
                max_examples: int | None) -> _Spec:
  if name not in SPECS:
    raise DataError(
        f"unknown tfds dataset name={name!r}; supported: {', '.join(sorted(SPECS))}")
  if process_count < 1:
    raise DataError(f"process_count must be >= 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise DataError(
        f"process_index must lie in 0..{process_count - 1}, got {process_index}")
  if max_examples is not None and max_examples < 1:
    raise DataError(f"max_examples must be None or >= 1, got {max_examples}")
  return SPECS[name]


def check_prepared(name: str, data_dir: str | None = None) -> None:
  """DataNotFound (the message `load_tfds_dataset` would give) unless `name` is prepared as
  ArrayRecord under data_dir ($TFDS_DATA_DIR, else tfds' default); reads no example, so
  `ardiff run` checks it before it writes anything (`ardiff.preflight`)."""
  _check_args(name, 0, 1, None)
  error = _not_prepared(name, data_dir or os.environ.get("TFDS_DATA_DIR") or None, None)
  if error is not None:
    raise error


def _not_prepared(name: str, data_dir: str | None, cause: Exception | None) -> Exception | None:
  """The error for a dataset that is missing or stored without random access (`cause`: what
  reading it raised, if it was read); None otherwise."""
  import tensorflow_datasets as tfds

  try:
    # "Variant folder ... has no dataset_info.json": what the message below says in words.
    with console.held_logs("absl", drop=lambda error: True):
      builder = tfds.builder(name, data_dir=data_dir)
      searched, prepared = str(builder.data_dir), builder.is_prepared()
      stored = str(builder.info.file_format) if prepared else ""
  except Exception:  # pylint: disable=broad-except  # only used to word the message
    searched, prepared, stored = data_dir or "the default tfds data_dir", False, ""
  random_access = "array_record" in stored.lower() and not isinstance(cause, NotImplementedError)
  if prepared and random_access:
    return None  # prepared, so a failure is something else: let it through unchanged
  if prepared:
    why = cause or f"stored as {stored}"
    what, verb = f"is prepared at {searched} but not as ArrayRecord ({why})", "rebuild it"
  else:
    what, verb = f"is not prepared: searched {searched}", "build it"
  target = data_dir or "DIR"
  return DataNotFound(
      f"tfds dataset {name!r} {what}. Nothing is downloaded at run time; {verb} once on a "
      f"machine with network and TensorFlow (pip install tensorflow tensorflow-datasets) with "
      f"`tfds build {name} --file_format=array_record --data_dir={target}` (or "
      f"`tfds.builder({name!r}, data_dir={target!r}, file_format='array_record')"
      f".download_and_prepare()`), then pass data_dir=... or set TFDS_DATA_DIR to that folder.")


def _read(source, indices) -> tuple[np.ndarray, np.ndarray]:
  """Decodes the examples at `indices` into uint8 images [N, H, W, C] and int32 labels [N]."""
  # One example at a time: __getitems__ is not supported by tfds' mock data source.
  examples = [source[int(i)] for i in indices]
  x = np.stack([np.asarray(ex["image"], dtype=np.uint8) for ex in examples])
  y = np.asarray([ex["label"] for ex in examples], dtype=np.int32)
  return x, y


def load_tfds_dataset(name: str, data_dir: str | None = None, process_index: int = 0,
                      process_count: int = 1, max_examples: int | None = None) -> Dataset:
  """Loads `name` ("mnist" or "cifar10") as uint8 images with 256 levels and 10 classes.

  Args:
    name: "mnist" (28x28x1) or "cifar10" (32x32x3).
    data_dir: the tfds data folder; None means $TFDS_DATA_DIR, else tfds' default.
    process_index: this process's index (jax.process_index()).
    process_count: the number of processes (jax.process_count()).
    max_examples: if set, only the first max_examples of each split are used (the train
      split is capped before it is sharded, so the shards still cover the capped split).

  Returns:
    A Dataset with this process's shard of the train split and the whole test split.

  Raises:
    DataError (a ValueError): an unknown name or bad process_index/process_count/max_examples,
      images of the wrong shape, labels or levels out of range.
    DataNotFound (a FileNotFoundError): the dataset is not prepared under data_dir (the
      message says how).
  """
  spec = _check_args(name, process_index, process_count, max_examples)
  import tensorflow_datasets as tfds

  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
  # tfds warns of the folders it finds incomplete before it fails: dropped where DataNotFound's
  # one line says it all, printed otherwise.
  with console.held_logs("absl", drop=lambda error: isinstance(error, DataNotFound)):
    try:
      sources = tfds.data_source(
          name, split=["train", "test"], data_dir=data_dir, download=False, try_gcs=False)
    except Exception as e:  # pylint: disable=broad-except  # tfds raises several kinds here
      error = _not_prepared(name, data_dir, e)
      if error is None:
        raise
      raise error from e

  splits = {}
  for split, source in zip(("train", "test"), sources):
    n = len(source) if max_examples is None else min(len(source), max_examples)
    indices = np.arange(n)
    if split == "train":
      indices = indices[process_index::process_count]
      if not len(indices):
        raise DataError(
            f"dataset {name!r}: process_index {process_index} of process_count "
            f"{process_count} gets no train examples out of {n}")
    x, y = _read(source, indices)
    if x.shape[1:] != spec.shape:
      raise DataError(
          f"dataset {name!r}: expected images of shape {spec.shape}, got {x.shape[1:]}")
    splits[split] = (x, y)

  (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
  return Dataset(
      name=name, kind="image", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
      num_classes=spec.num_classes, num_levels=spec.num_levels)
