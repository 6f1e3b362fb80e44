"""Order-agnostic autoregression (ARDM, Hoogeboom et al. 2021): remove pixels in a random
order; a bidirectional transformer with a mask token predicts every hidden pixel from the
revealed ones, so sampling may reveal k pixels per step (parallel decoding).

Samplers: `ardm` (a fixed plan, k pixels per step: `ardiff.processes.token_samplers.ardm`) and
`confidence` (the model chooses which positions to reveal: `token_samplers.confidence`).
"""

from __future__ import annotations

from ardiff.processes.autoregressive import objectives
from ardiff.processes.autoregressive.transformer_process import TransformerProcess
from ardiff.processes.token_samplers import ardm


class OrderAgnosticAR(TransformerProcess):
  """ARDM with an injected bidirectional `Transformer`; the loss is the one-sample ARDM bound."""

  causal = False
  _nll_key, _bpd_key = "bound", "bound_bpd"  # one-sample ARDM estimate of the NLL bound
  samplers = ("ardm", "confidence")

  def _nll(self, logits_fn, x, y, key):
    return objectives.ardm_loss(logits_fn, x, y, key, self.model.mask_id)

  def step_sizes(self, spec) -> tuple[int, ...]:
    """The number of pixels each step of an `ardm` spec reveals (`token_samplers.ardm`)."""
    return ardm.step_sizes(self, self.parse(spec))
