"""The feature classifier behind ``ardiff.metrics.sample_quality``: its training and on-disk cache.

A small CNN (``ardiff.models.classifier.Classifier``) is trained deterministically on the train
split of an image ``Dataset``: ``train_classifier`` is a function of the dataset and the
``ClassifierTraining`` settings alone. ``load_or_train_classifier`` caches the trained
parameters in a directory, under a file name (``cache_path``) that hashes the dataset and the
settings, so experiments share one classifier and a changed dataset or recipe retrains.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ardiff import storage
from ardiff.data.base import Dataset, batch_indices
from ardiff.data.levels import levels_to_unit
from ardiff.models.classifier import Classifier

Params = Any

# 500 steps of batch 128 (~43 epochs of the digits train split) reach ~98.7% test accuracy.
DEFAULT_STEPS = 500
# Bump when the classifier architecture or training recipe changes, to invalidate caches.
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ClassifierTraining:
  """Everything that determines the trained classifier besides the dataset."""

  seed: int = 0
  steps: int = DEFAULT_STEPS
  batch_size: int = 128
  learning_rate: float = 2e-3
  weight_decay: float = 1e-4
  widths: tuple[int, int] = (32, 64)
  feature_dim: int = 64

  def __post_init__(self):
    object.__setattr__(self, "widths", tuple(self.widths))  # hashable: a static jit argument

  def model(self, num_classes: int) -> Classifier:
    return Classifier(num_classes, widths=self.widths, feature_dim=self.feature_dim)


def check_image_dataset(dataset: Dataset) -> None:
  """Raise ValueError unless `dataset` holds images (the classifier is a CNN)."""
  if dataset.kind != "image":
    raise ValueError(f"dataset {dataset.name!r}: sample quality needs kind 'image', "
                     f"got {dataset.kind!r}")


def train_classifier(dataset: Dataset, seed: int = 0, steps: int = DEFAULT_STEPS,
                     **settings) -> Params:
  """Train the feature classifier on dataset's train split; a function of its arguments alone.

  The batch for step s is ``batch_indices(seed, s, batch_size, n_train)``; the init key is
  ``jax.random.key(seed)``; AdamW with cosine decay and a jitted train step. (A Python loop, not
  ``lax.scan``: XLA on CPU ran these convolutions ~30x slower inside the scan's while loop.)
  ``settings`` overrides the other fields of ``ClassifierTraining``.
  """
  cfg = ClassifierTraining(seed=seed, steps=steps, **settings)
  check_image_dataset(dataset)
  if cfg.steps < 1:
    raise ValueError(f"steps must be >= 1, got {cfg.steps}")
  x_train, y_train, levels = dataset.x_train, dataset.y_train.astype(np.int32), dataset.num_levels
  model = cfg.model(dataset.num_classes)
  params = _init(model, jax.random.key(cfg.seed), levels_to_unit(x_train[:1], levels))
  # Everything the step depends on but the seed: another seed reuses the compiled step.
  step_settings = (model, cfg.learning_rate, cfg.steps, cfg.weight_decay)
  opt_state = _optimizer(*step_settings[1:]).init(params)
  for step in range(cfg.steps):
    idx = batch_indices(cfg.seed, step, cfg.batch_size, len(x_train))
    params, opt_state = _train_step(step_settings, params, opt_state,
                                    levels_to_unit(x_train[idx], levels), y_train[idx])
  return params


@functools.partial(jax.jit, static_argnums=0)
def _init(model: Classifier, key: jax.Array, x: jax.Array) -> Params:
  return model.init(key, x)


def _optimizer(learning_rate: float, steps: int,
               weight_decay: float) -> optax.GradientTransformation:
  return optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnums=0)
def _train_step(settings: tuple[Classifier, float, int, float], params: Params, opt_state,
                x: jax.Array, y: jax.Array):
  """One AdamW step on the cross-entropy; settings = (model, learning_rate, steps, weight_decay)."""
  model = settings[0]

  def loss_fn(p):
    logits, _ = model.apply(p, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  tx = _optimizer(*settings[1:])
  updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def cache_path(dataset: Dataset, cache_dir: str, seed: int = 0, steps: int = DEFAULT_STEPS,
               **settings) -> str:
  """The cache file for a classifier: named by a hash of the dataset and training settings.

  The hash covers the dataset's name, shape, levels, classes and a digest of its train split,
  so a changed dataset never reuses a stale classifier.
  """
  cfg = ClassifierTraining(seed=seed, steps=steps, **settings)
  data = hashlib.sha256()
  data.update(np.ascontiguousarray(dataset.x_train).tobytes())
  data.update(np.ascontiguousarray(dataset.y_train).tobytes())
  key = json.dumps({
      "version": _CACHE_VERSION, "dataset": dataset.name, "shape": list(dataset.shape),
      "num_levels": dataset.num_levels, "num_classes": dataset.num_classes,
      "train_sha256": data.hexdigest(), "training": dataclasses.asdict(cfg),
  }, sort_keys=True)
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  return os.path.join(storage.normpath(cache_dir), f"classifier_{dataset.name}_{digest}.msgpack")


def load_or_train_classifier(dataset: Dataset, cache_dir: str, seed: int = 0,
                             steps: int = DEFAULT_STEPS, **settings) -> Params:
  """Load the classifier from ``cache_path(...)``, or train it and write that file atomically."""
  path = cache_path(dataset, cache_dir, seed=seed, steps=steps, **settings)
  cfg = ClassifierTraining(seed=seed, steps=steps, **settings)
  template = jax.eval_shape(
      cfg.model(dataset.num_classes).init, jax.random.key(0),
      jnp.zeros((1, *dataset.shape), jnp.float32))
  if storage.exists(path):
    params = flax.serialization.from_bytes(template, storage.read_bytes(path))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    want = jax.tree.map(lambda a: (a.shape, a.dtype), template)
    if got != want:
      raise ValueError(f"cached classifier {path!r} does not match the model; delete it")
    return jax.tree.map(jnp.asarray, params)
  params = train_classifier(dataset, seed=seed, steps=steps, **settings)
  storage.makedirs(cache_dir)
  if storage.is_remote(path):
    storage.write_atomic(path, flax.serialization.to_bytes(params))  # one object upload
    return params
  # Locally a temporary file of its own (several processes may train the same classifier).
  fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=".classifier_", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(flax.serialization.to_bytes(params))
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return params
