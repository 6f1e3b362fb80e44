"""Order-agnostic autoregression (ARDM, Hoogeboom et al. 2021): remove pixels in a random
order; a bidirectional transformer with a mask token predicts every hidden pixel from the
revealed ones, so sampling may reveal k pixels per step (parallel decoding).

Samplers: `ardm` (a fixed plan, k pixels per step: `ardiff.processes.token_samplers.ardm`) and
`confidence` (the model chooses which positions to reveal: `token_samplers.confidence`).
"""

from __future__ import annotations

from ardiff.processes.autoregressive import objectives, orders
from ardiff.processes.autoregressive.transformer_process import TransformerProcess
from ardiff.processes.token_samplers import ardm


class OrderAgnosticAR(TransformerProcess):
  """ARDM with an injected bidirectional `Transformer`; the loss is the one-sample ARDM bound."""

  causal = False
  _nll_key, _bpd_key = "bound", "bound_bpd"  # one-sample ARDM estimate of the NLL bound
  provides = ("any_subset",)

  def _nll(self, logits_fn, x, y, key):
    return objectives.ardm_loss(logits_fn, x, y, key, self.model.mask_id)

  def step_sizes(self, spec) -> tuple[int, ...]:
    """The number of pixels each step of an `ardm` spec reveals (`token_samplers.ardm`)."""
    return ardm.step_sizes(self, self.parse(spec))

  def nll_bound(self, params, batch, key):
    """The ARDM bound, [B] bits per dimension: the exact chain-rule NLL along one random order
    per example, -sum_t log2 p(x_sigma(t) | x_sigma(<t), y) / L (L network calls), an
    unbiased, low-variance estimate of the bound E_sigma[-log2 p_sigma(x | y)] / L. Masked
    diffusion inherits it: its continuous-time ELBO is this bound (tests/processes/masked)."""
    x, y = self._inputs(batch)
    order = orders.random_orders(key, x.shape[0], x.shape[1])
    nll = objectives.order_nll(lambda t, lab: self.model.apply(params, t, lab), x, y, order,
                               self.model.mask_id)
    return objectives.nats_to_bpd(nll, self.seq_len)
