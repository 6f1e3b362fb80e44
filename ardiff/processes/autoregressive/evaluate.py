"""Evaluation helpers for the autoregressive models on an image dataset (batched, jitted)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.processes.autoregressive import objectives


def ardm_step_losses(process, params, toks: np.ndarray, y: np.ndarray, key,
                     batch_size: int = 128) -> np.ndarray:
  """Per-step losses L_t (nats) on a set of examples, for the step-budget dynamic program; the
  network sees batch_size examples at a time (L = 784 attention maps for 512 examples at once
  would not fit in memory)."""
  logits_fn = functools.partial(_apply, process.model, params)
  return np.asarray(jax.jit(objectives.per_step_losses, static_argnums=(0, 4, 5))(
      logits_fn, jnp.asarray(toks), jnp.asarray(y), key, process.model.mask_id, batch_size),
      np.float64)


def _apply(model, params, tokens, y):
  return model.apply(params, tokens, y)


def budget_losses(process, params, dataset, key, num_fit: int = 512,
                  num_eval: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """Per-step losses for step budgets: (fit, evaluate).

  The dynamic program is fitted on losses measured on (part of) the train split and the chosen
  budget is scored with losses measured on (part of) the test split. Fitting and scoring on the
  same noisy estimates would let the DP exploit their noise and report a bound below the
  one-pixel-per-step bound, which no parallel budget can truly beat. Each costs L network calls
  per example, hence the caps (digits' whole 297-image test split is under num_eval);
  num_eval <= 0 skips the test split and returns (fit, None).
  """
  def flat(x, n):
    return x[:n].reshape(min(n, len(x)), -1).astype(np.int32)

  fit = ardm_step_losses(process, params, flat(dataset.x_train, num_fit),
                         dataset.y_train[:num_fit], jax.random.fold_in(key, 0))
  if num_eval <= 0:  # the caller only needs the fit
    return fit, None
  test = ardm_step_losses(process, params, flat(dataset.x_test, num_eval),
                          dataset.y_test[:num_eval], jax.random.fold_in(key, 1))
  return fit, test
