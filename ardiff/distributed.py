"""Multi-host start-up: `jax.distributed.initialize()` when launched on several hosts."""

from __future__ import annotations

import os

import jax

# Set by cloud TPU VMs, SLURM, or by hand (JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES +
# JAX_PROCESS_ID) for a local multi-process run.
_MULTI_HOST_HINTS = ("JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_JOB_ID")


def maybe_initialize() -> bool:
  """Initialise the distributed runtime when the environment says there are several hosts.

  A no-op on a single host. Returns whether it initialised."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  several_tpu_hosts = "," in hosts
  explicit = "JAX_COORDINATOR_ADDRESS" in os.environ
  slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1
  if not (several_tpu_hosts or explicit or slurm):
    return False
  if explicit:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()  # auto-detects TPU pods and SLURM
  return True
