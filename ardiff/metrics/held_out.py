"""Held-out bits per dimension of any process with a likelihood, through one call:

    bits = test_bpd(process, params, x, y, key, batch_size=256)

the mean over the N examples of `process.nll_bound` (`ardiff.processes.base`), which gives
each example's -log2 p(x | y) / D exactly or a bound on it:

    test_bpd = (1 / N) sum_n nll_bound(x_n, y_n)  [bits per dimension].

The examples go through in batches of `batch_size`; the last is filled up by wrapping around
to the first examples and the filling is dropped, so every call of the bound has one shape
and compiles once. Batch i draws with fold_in(key, i): two models scored with the same key
see the same randomness (orders, timesteps, noise), which pairs their estimates.
"""

from __future__ import annotations

import functools

import jax
import numpy as np


def test_bpd(process, params, x, y, key, *, batch_size: int = 256, **bound_options) -> float:
  """Mean `process.nll_bound` over x [N, ...] (the process's own inputs) and labels y [N].

  bound_options go to nll_bound (e.g. num_t_samples=32 for Gaussian diffusion). A process
  without nll_bound has no likelihood to score: ValueError naming it.
  """
  bound = getattr(process, "nll_bound", None)
  if bound is None:
    raise ValueError(f"{type(process).__name__} has no likelihood (no nll_bound method): "
                     "held-out bits are not defined for it")
  x, y = np.asarray(x), np.asarray(y, np.int32)
  n = len(x)
  if n == 0:
    raise ValueError("test_bpd: x is empty")
  if y.shape != (n,):
    raise ValueError(f"test_bpd: y must have shape ({n},), one label per example, got {y.shape}")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"test_bpd: batch_size must be a positive integer, got {batch_size!r}")
  batch_size = min(batch_size, n)
  fn = jax.jit(functools.partial(bound, **bound_options))
  total = 0.0
  for i, start in enumerate(range(0, n, batch_size)):
    idx = np.arange(start, start + batch_size) % n  # wraps around; the filling is dropped
    bits = np.asarray(fn(params, {"x": x[idx], "y": y[idx]}, jax.random.fold_in(key, i)))
    total += float(np.sum(bits[:min(batch_size, n - start)], dtype=np.float64))
  return total / n
