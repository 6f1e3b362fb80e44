"""What every experiment file shares: work-dir layout, cached training, timing."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

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
  """
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


def is_chief() -> bool:
  """Only process 0 writes figures and tables on multi-host runs."""
  return jax.process_index() == 0
