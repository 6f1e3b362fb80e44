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
