"""Datasets by name: embedded ones (spiral, digits) need no download; tfds ones must be prepared."""

from __future__ import annotations

from typing import Any

from ardiff.data.base import DataSpec, Dataset, batch_indices
from ardiff.data.levels import levels_to_unit, unit_to_levels
from ardiff.registry import Registry

DATASETS: Registry = Registry("dataset")


@DATASETS.register("spiral")
def _spiral(**kw: Any) -> Dataset:
  from ardiff.data.spiral import spiral_dataset

  return spiral_dataset(**kw)


@DATASETS.register("digits")
def _digits(**kw: Any) -> Dataset:
  from ardiff.data.digits import load_digits_dataset

  return load_digits_dataset(**kw)


@DATASETS.register("digits_independent")
def _digits_independent(seed: int = 0) -> Dataset:
  """digits with each pixel position's values shuffled across the images of its split
  (ardiff.data.synthetic.independent_pixels): same marginals, no dependence between pixels."""
  from ardiff.data.digits import load_digits_dataset
  from ardiff.data.synthetic import independent_pixels

  return independent_pixels(load_digits_dataset(), seed=seed)


@DATASETS.register("npz")
def _npz(**kw: Any) -> Dataset:
  from ardiff.data.arrays import load_npz_dataset

  return load_npz_dataset(**kw)


def _tfds(name: str):
  def load(**kw: Any) -> Dataset:
    import jax

    from ardiff.data.tfds_source import load_tfds_dataset

    kw.setdefault("process_index", jax.process_index())
    kw.setdefault("process_count", jax.process_count())
    return load_tfds_dataset(name, **kw)

  return load


DATASETS.register("mnist")(_tfds("mnist"))
DATASETS.register("cifar10")(_tfds("cifar10"))


def load_dataset(name: str, **kwargs: Any) -> Dataset:
  """The dataset registered as `name`, loaded and checked (a DataError names what is wrong)."""
  from ardiff.errors import DataError

  if name not in DATASETS:
    raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS.names())}")
  return DATASETS.get(name)(**kwargs)


def data_spec(name: str, **kwargs: Any) -> DataSpec:
  """The shape, classes and levels of a dataset without reading it where they are known in
  advance (digits, mnist, cifar10), so configs validate without the data being prepared;
  other datasets are loaded."""
  from ardiff.data.tfds_source import SPECS

  if name == "digits":
    return DataSpec("digits", "image", (8, 8, 1), 10, 17)
  if name in SPECS:
    spec = SPECS[name]
    return DataSpec(name, "image", spec.shape, spec.num_classes, spec.num_levels)
  return load_dataset(name, **kwargs).spec


__all__ = ["DATASETS", "DataSpec", "Dataset", "batch_indices", "data_spec", "levels_to_unit",
           "load_dataset", "unit_to_levels"]
