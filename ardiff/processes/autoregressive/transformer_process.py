"""What raster AR and order-agnostic AR share: an injected transformer, input handling, label
dropping, the loss around a per-example NLL, and the sampling contract's plumbing: the samplers are
`ardiff.processes.token_samplers` (a process takes every one whose ``requires`` its
``provides`` covers).

A batch is ``{"x": int tokens [B, L] (or [B, ...] with L entries, flattened in raster order),
"y": int32 labels [B]}``. With ``train=True`` labels are dropped to the null label
``num_classes`` with probability ``p_uncond`` (classifier-free guidance) and dropout is active.
Losses are in nats per token (NLL / L), so both processes train on the same scale; the metrics
report bits per dimension, ``bpd = NLL / (L ln 2)``. Samples come back as int levels in the
data's shape (`data_shape`, default [L]), uint8 when the vocabulary fits.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ardiff import parallel
from ardiff.models.transformer import Transformer
from ardiff.processes import categorical, guidance as guide, randomness
from ardiff.processes.autoregressive import objectives
from ardiff.processes.base import Batch, Params
from ardiff.processes.spec import SampleSpec, check_spec, parse_spec
from ardiff.processes.token_samplers import TOKEN_SAMPLERS, samplers_for


class TransformerProcess:
  """Shared construction, input handling, label dropping, loss and sampling plumbing."""

  causal: bool
  inputs = "tokens"  # int levels (`model_cache.model_inputs`), for every token process
  _nll_key: str  # metric name of the per-example NLL (nats)
  _bpd_key: str  # metric name of the same in bits per dimension
  provides: tuple[str, ...]  # what token samplers may rely on (`token_samplers.base`)

  def __init__(self, model: Transformer, p_uncond: float = 0.1,
               data_shape: Sequence[int] | None = None):
    if not isinstance(model, Transformer):
      raise ValueError(f"model must be an ardiff.models.transformer.Transformer, got "
                       f"{type(model).__name__}")
    if model.causal != self.causal:
      raise ValueError(f"{type(self).__name__} needs a transformer with causal={self.causal}, "
                       f"got causal={model.causal}")
    if not 0.0 <= p_uncond <= 1.0:
      raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
    self.model, self.p_uncond = model, p_uncond
    self.data_shape = tuple(int(d) for d in (data_shape or (model.seq_len,)))
    if math.prod(self.data_shape) != model.seq_len:
      raise ValueError(f"data_shape {self.data_shape} must hold seq_len={model.seq_len} tokens")

  @property
  def vocab_size(self) -> int:
    return self.model.vocab_size

  @property
  def seq_len(self) -> int:
    return self.model.seq_len

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @property
  def mask_id(self) -> int:
    return categorical.mask_token(self.vocab_size)

  # ---------------------------------------------------------------- training

  def _inputs(self, batch: Batch) -> tuple[jax.Array, jax.Array]:
    x, y = batch["x"], batch["y"]
    x = jnp.asarray(x).reshape(x.shape[0], -1)
    if x.shape[1] != self.seq_len:
      raise ValueError(f"batch['x'] must hold seq_len={self.seq_len} tokens per example, "
                       f"got shape {batch['x'].shape}")
    return x.astype(jnp.int32), jnp.asarray(y, jnp.int32)

  def init_params(self, key: jax.Array, batch: Batch) -> Params:
    x, y = self._inputs(batch)
    return jax.jit(self.model.init)(key, x[:1], y[:1])

  def _logits_fn(self, params: Params, key: jax.Array, train: bool) -> objectives.LogitsFn:
    rngs = {"dropout": key} if train else None
    return lambda tokens, y: self.model.apply(params, tokens, y, train=train, rngs=rngs)

  def _drop_labels(self, key: jax.Array, y: jax.Array) -> jax.Array:
    drop = jax.random.bernoulli(key, self.p_uncond, y.shape)
    return jnp.where(drop, self.num_classes, y)

  def _nll(self, logits_fn: objectives.LogitsFn, x: jax.Array, y: jax.Array,
           key: jax.Array) -> jax.Array:
    """Per-example NLL (or bound) in nats, [B]."""
    raise NotImplementedError

  def loss(
      self, params: Params, batch: Batch, key: jax.Array, train: bool = True
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean NLL in nats per token; metrics: nats per example and bits per dimension."""
    x, y = self._inputs(batch)
    k_drop, k_dropout, k_nll = jax.random.split(key, 3)
    if train:
      y = self._drop_labels(k_drop, y)
    nll = self._nll(self._logits_fn(params, k_dropout, train), x, y, k_nll).mean()
    metrics = {self._nll_key: nll, self._bpd_key: objectives.nats_to_bpd(nll, self.seq_len)}
    return nll / self.seq_len, metrics

  # ---------------------------------------------------------------- sampling

  @property
  def samplers(self) -> tuple[str, ...]:
    """The token samplers it takes: every registered one whose `requires` it `provides`."""
    return samplers_for(self.provides)

  def parse(self, spec: "SampleSpec | str") -> SampleSpec:
    spec = parse_spec(spec)
    samplers = {name: TOKEN_SAMPLERS.get(name) for name in self.samplers}
    check_spec(spec, {name: s.options for name, s in samplers.items()},
               process=type(self).__name__,
               needs_steps=[name for name, s in samplers.items() if s.needs_steps])
    temperature = spec.get("temperature", 1.0)
    greedy_ok = samplers[spec.name].greedy
    if (not isinstance(temperature, (int, float)) or temperature < 0
        or (temperature == 0 and not greedy_ok)):
      raise ValueError(f"sampler {spec.name!r}: temperature must be a number "
                       f"{'>=' if greedy_ok else '>'} 0, got {temperature!r}")
    return spec

  def sample(self, params: Params, key: jax.Array, labels, spec: "SampleSpec | str", *,
             guidance: guide.Guidance | None = None, mesh=None) -> jax.Array:
    """Int levels [B, *data_shape] for `labels` [B] (see `ardiff.processes.base`)."""
    spec = self.parse(spec)
    sampler = TOKEN_SAMPLERS.get(spec.name)
    sampler.steps(self, spec)  # checks the options before anything is traced
    labels = guide.check_labels(labels, self.num_classes, guidance)

    def fn(params, keys, labels):
      cond = None if guidance is None else guide.guidance_cond(labels, guidance, self.num_classes)
      return sampler.sample(self, params, keys, labels, spec, cond)

    keys = randomness.example_keys(key, labels.shape[0])
    tokens = parallel.run_sharded(fn, params, keys, labels, mesh)
    dtype = jnp.uint8 if self.vocab_size <= 256 else jnp.int32
    return tokens.reshape(-1, *self.data_shape).astype(dtype)

  def sample_history(self, params: Params, key: jax.Array, labels,
                     spec: "SampleSpec | str") -> np.ndarray:
    """The sample being revealed: float32 [S, B, *data_shape], the state after each of the
    spec's S steps in data space (integer levels as floats), NaN where a pixel is still hidden;
    entry S - 1 is what `sample` draws with the same key. Unguided and on one device: for
    figures (`ardiff.report.reveal`). The sampler's `history` (`token_samplers.base`)."""
    spec = self.parse(spec)
    sampler = TOKEN_SAMPLERS.get(spec.name)
    sampler.steps(self, spec)
    labels = guide.check_labels(labels, self.num_classes, None)
    keys = randomness.example_keys(key, labels.shape[0])
    history = jax.jit(lambda p, k, y: sampler.history(self, p, k, y, spec))(params, keys, labels)
    history = np.asarray(history, np.float32)
    return history.reshape(history.shape[:2] + self.data_shape)

  def steps(self, spec: "SampleSpec | str") -> int:
    """S, the number of steps of a spec (the length of its `sample_history`)."""
    spec = self.parse(spec)
    return TOKEN_SAMPLERS.get(spec.name).steps(self, spec)

  def nfe(self, spec: "SampleSpec | str", *, guidance: guide.Guidance | None = None) -> int:
    spec = self.parse(spec)
    sampler = TOKEN_SAMPLERS.get(spec.name)
    nfe = (sampler.nfe or sampler.steps)(self, spec)
    return nfe * (1 if guidance is None else 2)
