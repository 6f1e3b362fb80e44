"""The one interface every generative model here implements.

A *removal process* takes information out of the data step by step; a predictor (a neural
network) is trained to undo one step. Training only needs two things from a process: how to
initialise the predictor's parameters and the per-batch loss. Sampling is process-specific
(a loop of predictor calls) and lives beside each process.

A batch is a dict of arrays with a leading batch axis: ``{"x": data, "y": int32 labels}``.
``x`` is whatever the process consumes (float points/images for diffusion, int tokens for
autoregression); ``Dataset.model_inputs`` produces it.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

Params = Any
Batch = dict[str, jax.Array]


class Process(Protocol):
  """What the training loop needs from a removal process."""

  def init_params(self, key: jax.Array, batch: Batch) -> Params:
    """Initialise the predictor's parameters from an example batch."""

  def loss(
      self, params: Params, batch: Batch, key: jax.Array, train: bool = True
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean loss over the batch (a scalar to minimise) and scalar metrics to log."""
