"""Samples kept beside the model that drew them, so that rerunning an experiment after adding a
row (a sampler, a family) draws only the new rows and scores the old ones from disk.

    images = cached_samples(model.directory, params, "ddim:8", key, labels, draw)

`draw()` runs only when no file matches. The file name is a hash of everything the samples are
a function of: the parameters' bytes (a model trained further, or a snapshot, is another
entry), the spec text, the key's data, the labels, and `SAMPLER_VERSION`. Bump that constant
when a sampler's maths changes: every cached sample is then redrawn. A damaged file (torn,
wrong shape) is redrawn and replaced, never trusted.

Files: <model dir>/samples/<hash>.npy, written atomically. Only single-process runs use the
cache: on several hosts a hit on one and a miss on another would leave the drawing hosts waiting
in a collective, and a host's local disk may not hold what process 0 wrote, so multi-host runs
always draw.
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable

import jax
import numpy as np

from ardiff import storage

SAMPLER_VERSION = 1
FOLDER = "samples"


def samples_hash(params, spec: str, key: jax.Array, labels) -> str:
  """A hex digest of (parameters, spec, key, labels, SAMPLER_VERSION)."""
  h = hashlib.sha256(f"v{SAMPLER_VERSION}|{spec}|".encode())
  for leaf in jax.tree_util.tree_leaves(params):
    leaf = np.asarray(leaf)
    h.update(f"{leaf.dtype}{leaf.shape}".encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  h.update(np.asarray(jax.random.key_data(key)).tobytes())
  labels = np.asarray(labels)
  h.update(f"{labels.dtype}{labels.shape}".encode() + labels.tobytes())
  return h.hexdigest()[:24]


def _load(path: str, n: int) -> np.ndarray | None:
  try:
    images = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
  except (OSError, ValueError, EOFError):
    return None
  return images if images.ndim >= 1 and len(images) == n else None


def cached_samples(directory: str | None, params, spec: str, key: jax.Array, labels,
                   draw: Callable[[], np.ndarray], *, enabled: bool = True) -> np.ndarray:
  """`draw()` as a NumPy array, or the same samples saved by an earlier call."""
  if not enabled or directory is None or jax.process_count() > 1:
    return np.asarray(draw())
  path = storage.join(directory, FOLDER, samples_hash(params, spec, key, labels) + ".npy")
  images = _load(path, len(labels)) if storage.isfile(path) else None
  if images is not None:
    return images
  images = np.asarray(draw())
  buffer = io.BytesIO()
  np.save(buffer, images, allow_pickle=False)
  storage.makedirs(storage.join(directory, FOLDER))
  storage.write_atomic(path, buffer.getvalue())
  return images
