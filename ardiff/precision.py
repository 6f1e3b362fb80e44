"""Mixed precision: the compute dtype a model runs in, by name.

The convention for every model: a `dtype` field (default float32) passed to its layers as
`dtype=self.dtype`, with `param_dtype` left float32 and the output cast back to float32. So with
bfloat16 compute the parameters, gradients, optimiser state and EMA stay float32 and the loss is
computed in float32; only the activations and matmuls run in bfloat16. On the spiral, bfloat16
training matches float32's loss to ~1e-4 relative and its sample quality (numbers in
tests/test_precision.py).
"""

from __future__ import annotations

import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str, key: str = "dtype"):
  """'float32' -> jnp.float32, 'bfloat16' -> jnp.bfloat16; `key` names the config entry in the
  error for anything else."""
  if not isinstance(name, str) or name not in COMPUTE_DTYPES:
    raise ValueError(f"{key} must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
  return COMPUTE_DTYPES[name]
