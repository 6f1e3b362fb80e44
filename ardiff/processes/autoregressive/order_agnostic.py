"""Order-agnostic autoregression (ARDM, Hoogeboom et al. 2021): remove pixels in a random
order; a bidirectional transformer with a mask token predicts every hidden pixel from the
revealed ones, so sampling may reveal k pixels per step (parallel decoding).

Sampling specs (`ardm`), options:
  k=4                    k pixels per step (the last step takes the remainder): ceil(L/k) steps;
  order=random|contiguous  random positions per example (default) or raster chunks;
  sizes=(1,7,56)         explicit step sizes summing to L;
  dp=8                   8 steps with sizes from the dynamic program: resolve it first with
                         `budget.resolve_dp(spec, step_losses)`, which adds `sizes`;
  temperature=1.0.
Without k, sizes or dp, one pixel per step (L steps).

Confidence decoding (`confidence`, `ardiff.processes.autoregressive.confidence`): the model
chooses which hidden positions to reveal, the most confident first; `confidence:8` takes 8
steps (a step count is required), options:
  schedule=cosine|uniform  positions per step (MaskGIT's cosine: few first, many last);
  temperature=1.0          candidates from softmax(logits / temperature); 0: argmax (greedy);
  noise=0.0                Gumbel noise on the confidences, annealed to 0 over the steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ardiff.processes import discrete
from ardiff.processes.autoregressive import confidence, decode, objectives, orders
from ardiff.processes.autoregressive.transformer_process import TransformerProcess


class OrderAgnosticAR(TransformerProcess):
  """ARDM with an injected bidirectional `Transformer`; the loss is the one-sample ARDM bound."""

  causal = False
  _nll_key, _bpd_key = "bound", "bound_bpd"  # one-sample ARDM estimate of the NLL bound
  samplers = {"ardm": {"k": None, "order": "random", "sizes": None, "dp": None,
                       "temperature": 1.0},
              "confidence": {"schedule": "cosine", "temperature": 1.0, "noise": 0.0}}
  _greedy_samplers = ("confidence",)  # temperature 0 allowed: argmax
  _needs_steps = ("confidence",)

  def _nll(self, logits_fn, x, y, key):
    return objectives.ardm_loss(logits_fn, x, y, key, self.model.mask_id)

  def step_sizes(self, spec) -> tuple[int, ...]:
    """The number of pixels each step reveals, from the spec's k, sizes or dp."""
    spec = self.parse(spec)
    k, sizes, dp = spec.get("k"), spec.get("sizes"), spec.get("dp")
    order = spec.get("order", "random")
    if order not in ("random", "contiguous"):
      raise ValueError(f"sampler 'ardm': order must be random or contiguous, got {order!r}")
    if k is not None and sizes is not None:
      raise ValueError("sampler 'ardm': give k or sizes, not both")
    if sizes is not None:
      sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else (sizes,)
      if dp is not None and len(sizes) != dp:
        raise ValueError(f"sampler 'ardm': dp={dp} but {len(sizes)} sizes")
      return orders.check_step_sizes(sizes, self.seq_len)
    if dp is not None:
      if not isinstance(dp, int) or not 1 <= dp <= self.seq_len:
        raise ValueError(f"sampler 'ardm': dp must be an integer in 1..{self.seq_len}, got {dp!r}")
      raise ValueError(f"sampler 'ardm:dp={dp}' needs step sizes from the dynamic program: "
                       "resolve it with ardiff.processes.autoregressive.budget.resolve_dp("
                       "spec, step_losses) first (or give sizes=...)")
    if k is None:
      k = 1
    if not isinstance(k, int) or not 1 <= k <= self.seq_len:
      raise ValueError(f"sampler 'ardm': k must be an integer in 1..{self.seq_len}, got {k!r}")
    return orders.uniform_step_sizes(self.seq_len, k)

  def confidence_sizes(self, spec) -> tuple[int, ...]:
    """Positions revealed per step by a `confidence` spec."""
    spec = self.parse(spec)
    noise = spec.get("noise", 0.0)
    if not isinstance(noise, (int, float)) or noise < 0:
      raise ValueError(f"sampler 'confidence': noise must be a number >= 0, got {noise!r}")
    try:
      return confidence.reveal_schedule(self.seq_len, spec.steps, spec.get("schedule", "cosine"))
    except ValueError as e:
      raise ValueError(f"sampler 'confidence': {e}") from None

  def _steps(self, spec):
    if spec.name == "confidence":
      return len(self.confidence_sizes(spec))
    dp = spec.get("dp")
    if dp is not None and spec.get("sizes") is None:  # not resolved yet: its count is known
      if not isinstance(dp, int) or not 1 <= dp <= self.seq_len:
        raise ValueError(f"sampler 'ardm': dp must be an integer in 1..{self.seq_len}, "
                         f"got {dp!r}")
      return dp
    return len(self.step_sizes(spec))

  def _decode(self, params, keys, labels, spec, cond):
    if spec.name == "confidence":
      return self._confidence(params, keys, labels, spec, cond)
    sizes = self.step_sizes(spec)
    return decode.reveal_step_sample(self.model, params, keys, labels,
                                     self._reveal_steps(keys, spec, labels.shape[0]),
                                     len(sizes), temperature=spec.get("temperature", 1.0),
                                     cond=cond)

  def _confidence(self, params, keys, labels, spec, cond, return_history=False):
    if not return_history:  # one compiled program for every step count
      return decode.confidence_sample(
          self.model, params, keys, labels, self.confidence_sizes(spec),
          temperature=spec.get("temperature", 1.0), noise=spec.get("noise", 0.0),
          cond=cond)
    tokens = jnp.full((labels.shape[0], self.seq_len), self.mask_id, jnp.int32)
    return confidence.confidence_decode(
        lambda t: decode.model_call(self.model, params, t, cond, labels), keys, tokens,
        self.confidence_sizes(spec), mask_id=self.mask_id,
        temperature=spec.get("temperature", 1.0), noise=spec.get("noise", 0.0),
        return_history=return_history)

  def _reveal_steps(self, keys, spec, batch: int) -> jax.Array:
    """The step that reveals each position under an `ardm` spec: int32 [B, L] (a shape that
    does not depend on the number of steps, so every k shares one compiled decoder)."""
    sizes = self.step_sizes(spec)
    if spec.get("order", "random") == "contiguous":
      return jnp.broadcast_to(orders.reveal_steps(orders.raster_order(self.seq_len), sizes),
                              (batch, self.seq_len))
    # a random order per example, drawn from that example's own key
    return jax.vmap(lambda k: orders.reveal_steps(orders.random_orders(k, 1, self.seq_len)[0],
                                                  sizes))(discrete.setup_keys(keys))

  def _plan(self, keys, spec, batch: int) -> jax.Array:
    """The reveal plan of an `ardm` spec: bool [B, S, L] (for the step history)."""
    steps = jnp.arange(len(self.step_sizes(spec)), dtype=jnp.int32)
    return self._reveal_steps(keys, spec, batch)[:, None, :] == steps[:, None]

  def _history(self, params, keys, labels, spec):
    if spec.name == "confidence":
      return self._confidence(params, keys, labels, spec, None, return_history=True)[1]
    tokens = self._decode(params, keys, labels, spec, None)
    revealed = jnp.cumsum(self._plan(keys, spec, labels.shape[0]), axis=1) > 0  # [B, S, L]
    return jnp.where(jnp.swapaxes(revealed, 0, 1), tokens[None], self.mask_id)
