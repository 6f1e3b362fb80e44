"""Raster-order autoregression: remove the last pixel first, predict pixels left to right with
a causal transformer; exact likelihood, KV-cache sampling (`decode.raster_sample`).

Sampling specs: `raster` (one pixel per step, L network evaluations), with option
`temperature` (default 1).
"""

from __future__ import annotations

from ardiff.processes.autoregressive import decode, objectives
from ardiff.processes.autoregressive.transformer_process import TransformerProcess


class RasterAR(TransformerProcess):
  """Raster-order autoregression with an injected causal `Transformer`; exact likelihood."""

  causal = True
  _nll_key, _bpd_key = "nll", "bpd"  # exact NLL, nats per example and bits per dimension
  samplers = {"raster": {"temperature": 1.0}}

  def _nll(self, logits_fn, x, y, key):
    return objectives.raster_nll(logits_fn(x, y), x)

  def _decode(self, params, keys, labels, spec, cond):
    return decode.raster_sample(self.model, params, keys, labels,
                                temperature=spec.get("temperature", 1.0), cond=cond)

  def _history(self, params, keys, labels, spec):
    return decode.raster_history(self._decode(params, keys, labels, spec, None),
                                 self.mask_id)

  def _steps(self, spec):
    return self.seq_len
