"""Device mesh and input placement for data-parallel training and sampling.

One mesh axis, "data": the batch is sharded across every device of every host, parameters are
replicated. `jax.jit` with these shardings lets XLA insert the gradient all-reduce. On several
hosts each process supplies only its own slice of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_global_batch(batch_size: int, mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"train.batch_size={batch_size} must be divisible by the number of devices ({n})")
  if batch_size % jax.process_count():
    raise ValueError(
        f"train.batch_size={batch_size} must be divisible by the number of processes "
        f"({jax.process_count()})")


def process_slice(global_indices: np.ndarray) -> np.ndarray:
  """The part of a global batch this process loads (contiguous, in process order)."""
  per_process = len(global_indices) // jax.process_count()
  start = jax.process_index() * per_process
  return global_indices[start:start + per_process]


def put_global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assemble each process's local slice into one global array sharded on the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def run_sharded(fn, params, keys: jax.Array, labels: jax.Array, mesh=None):
  """fn(params, keys [B], labels [B]) with the batch sharded over `mesh` (default: every local
  device) and params replicated; returns fn's output for the B examples.

  B is padded up to a multiple of the device count by repeating the last example (the
  padding's outputs are dropped). fn must treat examples independently with per-example keys,
  so the result does not depend on the number of devices.
  """
  mesh = mesh or data_mesh(jax.local_devices())
  n, d = labels.shape[0], mesh.devices.size
  pad = -n % d
  if pad:
    keys = jax.numpy.concatenate([keys, jax.numpy.repeat(keys[-1:], pad, axis=0)])
    labels = jax.numpy.concatenate([labels, jax.numpy.repeat(labels[-1:], pad, axis=0)])
  keys, labels = jax.device_put((keys, labels), batch_sharding(mesh))
  out = fn(jax.device_put(params, replicated(mesh)), keys, labels)
  return jax.tree.map(lambda a: a[:n], out) if pad else out
