"""Device mesh and input placement for data-parallel training and sampling.

One mesh axis, "data": the batch is sharded across every device of every host, parameters are
replicated. `jax.jit` with these shardings lets XLA insert the gradient all-reduce. On several
hosts each process supplies only its own slice of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ardiff.configs.validation import ConfigError

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
  check_batch_split(batch_size, mesh.devices.size, jax.process_count())


def check_batch_split(batch_size: int, devices: int, processes: int = 1, grad_accum: int = 1,
                      section: str = "train") -> None:
  """A global batch splits evenly over the devices (each takes an equal share), over the
  processes (each loads its own slice) and, on each device, into `grad_accum` micro-batches;
  otherwise a ConfigError naming `section`'s key. Pure, so `ardiff run` can check a config
  against this machine before it writes anything (`ardiff.preflight`)."""
  key = f"config key '{section}.batch_size'"
  if batch_size % devices:
    raise ConfigError(f"{key}: {batch_size} must be divisible by the number of devices "
                      f"({devices}): each device takes an equal share of the batch")
  if batch_size % processes:
    raise ConfigError(f"{key}: {batch_size} must be divisible by the number of processes "
                      f"({processes}): each process loads an equal slice of the batch")
  if (batch_size // devices) % grad_accum:
    raise ConfigError(f"config key '{section}.grad_accum': {grad_accum} micro-batches must "
                      f"divide each device's {batch_size // devices} examples "
                      f"({section}.batch_size={batch_size} over {devices} devices)")


def process_slice(global_indices: np.ndarray) -> np.ndarray:
  """The part of a global batch this process loads (contiguous, in process order)."""
  per_process = len(global_indices) // jax.process_count()
  start = jax.process_index() * per_process
  return global_indices[start:start + per_process]


def put_global_batch(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """Assemble each process's local slice into one global array sharded on the data axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def stacked_batch_sharding(mesh) -> NamedSharding:
  """Batches stacked [n, B, ...] (several train steps in one call): sharded on B."""
  return NamedSharding(mesh, P(None, DATA_AXIS))


def put_stacked_batches(local: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """`put_global_batch` for [n, local B, ...] arrays: one global [n, B, ...] array each."""
  sharding = stacked_batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def run_sharded(fn, params, keys: jax.Array, labels: jax.Array, mesh=None):
  """fn(params, keys [B], labels [B]) with the batch sharded over `mesh` (default: every local
  device) and params replicated; returns fn's output for the B examples.

  B is padded up to a multiple of the device count by repeating the last example (the
  padding's outputs are dropped). fn must treat examples independently with per-example keys,
  so the result does not depend on the number of devices.

  Multi-host (no mesh given, several processes): each process draws its contiguous share of
  the B examples on its own devices, and every process gets all B back (an all-gather over
  processes; process 0 then writes the figures and tables). Every process must make the call.
  """
  if mesh is None and jax.process_count() > 1:
    return _run_across_processes(fn, params, keys, labels)
  mesh = mesh or data_mesh(jax.local_devices())
  n, d = labels.shape[0], mesh.devices.size
  pad = -n % d
  if pad:
    keys = jax.numpy.concatenate([keys, jax.numpy.repeat(keys[-1:], pad, axis=0)])
    labels = jax.numpy.concatenate([labels, jax.numpy.repeat(labels[-1:], pad, axis=0)])
  keys, labels = jax.device_put((keys, labels), batch_sharding(mesh))
  out = fn(jax.device_put(params, replicated(mesh)), keys, labels)
  return jax.tree.map(lambda a: a[:n], out) if pad else out


def _run_across_processes(fn, params, keys: jax.Array, labels: jax.Array):
  """`run_sharded` split over processes: process p draws examples [p m, (p + 1) m) with
  m = ceil(B / processes) (the last example repeated as padding), on its local devices."""
  from jax.experimental import multihost_utils

  n, count = labels.shape[0], jax.process_count()
  share = -(-n // count)
  pad = share * count - n
  if pad:  # typed PRNG keys stay jax arrays (numpy cannot hold them)
    keys = jax.numpy.concatenate([keys, jax.numpy.repeat(keys[-1:], pad, axis=0)])
    labels = jax.numpy.concatenate([labels, jax.numpy.repeat(labels[-1:], pad, axis=0)])
  mine = slice(jax.process_index() * share, (jax.process_index() + 1) * share)
  # Parameters replicated over the global mesh (as training leaves them): this host's copy.
  params = jax.tree.map(lambda a: a if getattr(a, "is_fully_addressable", True)
                        else a.addressable_data(0), params)
  out = run_sharded(fn, params, keys[mine], labels[mine], data_mesh(jax.local_devices()))
  everything = multihost_utils.process_allgather(jax.device_get(out), tiled=True)
  return jax.tree.map(lambda a: jax.numpy.asarray(a[:n]), everything)
