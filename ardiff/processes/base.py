"""The one interface every removal process implements: training and sampling.

A *removal process* takes information out of the data step by step; a predictor (a network
from `ardiff.models`, injected, never built by the process) is trained to undo one step, and
sampling runs it in a loop. The training loop (`ardiff.train`) needs `init_params` and `loss`;
experiments, the CLI and the benchmarks sample every process through one call:

    samples = process.sample(params, key, labels, spec, guidance=None)
    evaluations = process.nfe(spec, guidance=None)

- `labels` int [B]: class ids, or `process.num_classes` (the null label) for unconditional
  samples; B is the number of samples.
- `spec`: a `SampleSpec` or its text (`ardiff.processes.spec`): 'ddim:50', 'raster',
  'ardm:k=4', 'oneshot', ...; unknown names and options fail with a message listing what exists.
- `guidance`: an `ardiff.processes.guidance.Guidance` (weight w, optional negative label).
- The samples are in data space: integer levels [B, H, W, C] (uint8) for images, float32
  [B, D] for points.
- Sampling is data parallel (`ardiff.parallel.run_sharded`): the batch is sharded over the local
  devices with replicated params, and every example draws with its own key, so samples do not
  depend on the device count.
- `nfe(spec)` counts the network evaluations per sample the spec costs (a guided step runs two
  streams: two evaluations), so experiments never type an NFE by hand.

A batch is a dict of arrays with a leading batch axis: ``{"x": data, "y": int32 labels}``;
``x`` is whatever the process trains on (floats in [-1, 1] or points for diffusion, int tokens
for autoregression).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import SampleSpec

Params = Any
Batch = dict[str, jax.Array]


class Process(Protocol):
  """What the training loop, the experiments and the CLI need from a removal process.

  Optional, for a process with a likelihood (`ardiff.metrics.held_out.test_bpd` reads it):

      bits = process.nll_bound(params, batch, key)  # [B]

  bits per dimension per example: -log2 p(x | y) / D where the process has it exactly (raster
  orders), else an upper bound on it, or an unbiased estimate of such a bound (the ARDM bound
  along one random order; the diffusion bound with sampled timesteps). ``batch`` as `loss`
  takes it (``x`` in the process's own input space, ``y`` the labels, `num_classes` for the
  unconditional model); ``key`` draws whatever the estimate samples. No dropout, no label
  dropping: the trained model as it samples. Traceable, so a caller may jit it.
  """

  num_classes: int  # labels 0..num_classes-1; num_classes itself is the null label

  def init_params(self, key: jax.Array, batch: Batch) -> Params:
    """Initialise the predictor's parameters from an example batch."""

  def loss(
      self, params: Params, batch: Batch, key: jax.Array, train: bool = True
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean loss over the batch (a scalar to minimise) and scalar metrics to log."""

  def sample(self, params: Params, key: jax.Array, labels: jax.Array,
             spec: "SampleSpec | str", *, guidance: Guidance | None = None,
             mesh=None) -> jax.Array:
    """Samples in data space for `labels` [B] following `spec` (see the module docstring)."""

  def nfe(self, spec: "SampleSpec | str", *, guidance: Guidance | None = None) -> int:
    """Network evaluations per sample that `spec` costs."""
