"""Raster-order autoregression: remove the last pixel first, predict pixels left to right with
a causal transformer; exact likelihood, KV-cache sampling (`token_samplers.raster`).

Sampling specs: `raster` (one pixel per step, L network evaluations), with option
`temperature` (default 1).
"""

from __future__ import annotations

from ardiff.processes.autoregressive import objectives
from ardiff.processes.autoregressive.transformer_process import TransformerProcess


class RasterAR(TransformerProcess):
  """Raster-order autoregression with an injected causal `Transformer`; exact likelihood."""

  causal = True
  _nll_key, _bpd_key = "nll", "bpd"  # exact NLL, nats per example and bits per dimension
  provides = ("next_pixel",)

  def _nll(self, logits_fn, x, y, key):
    return objectives.raster_nll(logits_fn(x, y), x)

  def nll_bound(self, params, batch, key):
    """Exact -log2 p(x | y) / L per example, [B] bits per dimension, from one causal pass
    (`key` unused: nothing is sampled)."""
    x, y = self._inputs(batch)
    return objectives.nats_to_bpd(objectives.raster_nll(self.model.apply(params, x, y), x),
                                  self.seq_len)
