"""What experiment files share besides the model cache (`ardiff.model_cache`): spec checks
before training, timing, batched sampling, and which host writes the figures.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import jax
import numpy as np

from ardiff import console
from ardiff.configs.validation import ConfigError


def check_specs(process, specs, key: str, guidance=None) -> None:
  """Every sampling spec parses and fits the process; a ConfigError naming `key` otherwise."""
  for spec in specs:
    try:
      process.nfe(spec, guidance=guidance)
    except ValueError as e:
      raise ConfigError(f"config key {key!r}: {e}") from None


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
  """Process 0, the one that writes figures and tables (`ardiff.console.is_chief`)."""
  return console.is_chief()
