"""What every experiment file shares: work-dir layout, cached training, timing."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ardiff.config import config_hash
from ardiff.train import TrainConfig, TrainState, train


def model_dir(config: ml_collections.ConfigDict, workdir: str, name: str, *sections: Any) -> str:
  """Where a model trained with these config sections lives.

  Keyed by a hash of the sections, so experiments that train the same model share it and
  re-plotting never retrains. `config.model_cache` (if set) is a directory shared across
  experiments, relative to the work dir unless absolute (the digits experiments use
  "../models", i.e. runs/models beside runs/<experiment>); otherwise `workdir/models`.
  A compute dtype other than float32 (`config.dtype`) is part of the key: a bfloat16 model is a
  different model. float32 adds nothing, so caches made before the switch existed stay valid.
  """
  dtype = config.get("dtype", "float32")
  if dtype != "float32":
    sections = (*sections, {"dtype": dtype})
  root = os.path.join(workdir, config.get("model_cache") or "models")
  return os.path.join(root, f"{name}-{config_hash(*sections)}")


def train_cached(process, x: np.ndarray, y: np.ndarray, train_cfg: ml_collections.ConfigDict,
                 directory: str, **kwargs) -> TrainState:
  """Train, resume, or restore a finished run in `directory` (see ardiff.train.train)."""
  return train(process, x, y, TrainConfig.from_config(train_cfg), directory, **kwargs)


@contextlib.contextmanager
def timed(record: dict, key: str = "seconds"):
  """Wall time of a block into record[key]; the block must block on its results."""
  start = time.perf_counter()
  yield
  record[key] = time.perf_counter() - start


def block(x):
  return jax.block_until_ready(x)


def in_batches(sample: Callable[[jax.Array, jax.Array], Any], key: jax.Array, labels,
               batch_size: int) -> np.ndarray:
  """`sample(key, labels)` for every label, at most batch_size labels per call.

  Batch i uses fold_in(key, i). batch_size <= 0, or >= len(labels), is one call with `key`
  itself, so that small runs draw exactly what an unbatched call draws. Batching is what lets
  e.g. 2000 bidirectional-transformer samples at L = 784 fit in accelerator memory.
  """
  n = len(labels)
  if batch_size <= 0 or batch_size >= n:
    return np.asarray(sample(key, labels))
  return np.concatenate([np.asarray(sample(jax.random.fold_in(key, i), labels[s:s + batch_size]))
                         for i, s in enumerate(range(0, n, batch_size))])


def is_chief() -> bool:
  """Only process 0 writes figures and tables on multi-host runs."""
  return jax.process_index() == 0
