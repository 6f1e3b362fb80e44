"""`held_out.test_bpd`: one call for every process with a likelihood, equal to each process's
held-out bits written out from its maths (the code it replaced; it also matched the old entry
points, `raster_test_bpd`, `ardm_test_bpd`, `exact_test_bpd`, `upscale.held_out_bpd`, to
rtol 1e-5 before they were deleted in its favour), batched with one compiled
program, and a clear error for a process without a likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff import build
from ardiff.metrics import held_out
from ardiff.processes.autoregressive import bidirectional_raster, objectives, orders, upscale
from ardiff.processes.gaussian import likelihood
from ardiff.model_cache import model_inputs
from tests.processes.test_contract import LEVELS, tiny_images

N = 6  # examples scored
KEY = jax.random.key(7)


def _tiny(kind: str):
  """(process, params, inputs [N, ...], labels [N]) for a registered kind, tiny random images."""
  section, extra, _ = build.BUILDERS.get(kind).example()
  data = tiny_images()
  process = build.build(kind, section, data, **extra)
  x = model_inputs(process, data)
  params = process.init_params(jax.random.key(0), {"x": x[:2], "y": data.y_train[:2]})
  return process, params, x[:N], data.y_train[:N], data.x_train[:N]


def _per_batch(nll_fn, x, y, key, batch_size, length):
  """Bits per dimension of nats per example from nll_fn(xb, yb, batch key), batch by batch
  (batch i with fold_in(key, i)), averaged over the examples."""
  nll = [nll_fn(jnp.asarray(x[s:s + batch_size]), jnp.asarray(y[s:s + batch_size]),
                jax.random.fold_in(key, i))
         for i, s in enumerate(range(0, len(x), batch_size))]
  return float(objectives.nats_to_bpd(np.concatenate(nll).mean(), length))


def _reference(kind, process, params, x, y, levels):
  """Each kind's held-out bits written out from its maths (the code test_bpd replaced), with
  the batch size used: 3 divides N, so a per-batch random draw matches batch by batch; 4 leaves
  a remainder, which must not change an exact NLL."""
  if kind.startswith("gaussian"):  # the bound's own batched entry points
    return likelihood.bpd(process, params, levels, y, LEVELS, KEY, num_t_samples=3,
                          batch_size=4)["total"], 4
  logits_fn = lambda t, lab: process.model.apply(params, t, lab)  # noqa: E731
  length = process.seq_len
  if kind == "raster":  # one causal pass: the exact NLL
    return _per_batch(lambda xb, yb, _: objectives.raster_nll(logits_fn(xb, yb), xb), x, y,
                      KEY, N, length), 4
  if kind == "raster_bidirectional":  # the chain rule, one position per network call
    return _per_batch(lambda xb, yb, _: bidirectional_raster.exact_nll(logits_fn, xb, yb,
                                                                       process.model.mask_id),
                      x, y, KEY, N, length), 4
  if kind in ("ardm", "masked"):  # one random order per example (masked: its ELBO is this)
    return _per_batch(lambda xb, yb, k: objectives.order_nll(
        logits_fn, xb, yb, orders.random_orders(k, len(xb), length), process.model.mask_id),
        x, y, KEY, 3, length), 3

  def stages(xb, yb, k):  # upscale: one random order per stage, fold_in(batch key, s)
    stage_orders = jnp.stack([orders.random_orders(jax.random.fold_in(k, s), len(xb), length)
                              for s in range(process.layout.num_stages)])
    return upscale.upscale_order_nll(logits_fn, xb, yb, stage_orders, process.layout)

  return _per_batch(stages, x, y, KEY, 3, length), 3


@pytest.mark.parametrize("kind", ["raster", "ardm", "masked", "raster_bidirectional", "upscale",
                                  "gaussian", "gaussian_transformer", "gaussian_learned_var"])
def test_test_bpd_equals_each_processes_held_out_bits_written_out(kind):
  process, params, x, y, levels = _tiny(kind)
  old, batch_size = _reference(kind, process, params, x, y, levels)
  options = {"num_t_samples": 3} if kind.startswith("gaussian") else {}
  new = held_out.test_bpd(process, params, x, y, KEY, batch_size=batch_size, **options)
  np.testing.assert_allclose(new, old, rtol=1e-5)
  # An untrained token model is near uniform on 5 levels (log2 5 bits); an untrained
  # denoiser's bound is far looser, but still a positive number of bits.
  assert 0.5 < new < 20 if process.inputs == "tokens" else 0 < new < np.inf
  # Per example, as the protocol says: [N] bits whose mean is test_bpd (one batch here).
  bits = process.nll_bound(params, {"x": x, "y": y}, KEY, **options)
  assert bits.shape == (N,)


class _Counting:
  """A process whose bound is known: example n scores x[n, 0] + 10 y[n] bits; counts traces."""

  def __init__(self):
    self.traces = 0

  def nll_bound(self, params, batch, key):
    self.traces += 1
    return batch["x"][:, 0] * params + 10.0 * batch["y"]


def test_batches_keep_every_example_once_with_one_compiled_program():
  x = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  y = np.array([0, 1] * 5, np.int32)
  exact = float(np.mean(x[:, 0] + 10.0 * y))
  for batch_size in (1, 3, 4, 10, 64):
    process = _Counting()
    got = held_out.test_bpd(process, 1.0, x, y, KEY, batch_size=batch_size)
    assert got == pytest.approx(exact, rel=1e-12), batch_size
    assert process.traces == 1, (batch_size, process.traces)  # the remainder padded, not recompiled


def test_a_process_without_a_likelihood_or_bad_inputs_get_one_line_errors():
  process, params, x, y, _ = _tiny("oneshot")
  with pytest.raises(ValueError, match=r"^OneShot\w* has no likelihood \(no nll_bound"):
    held_out.test_bpd(process, params, x, y, KEY)
  counting = _Counting()
  with pytest.raises(ValueError, match="empty"):
    held_out.test_bpd(counting, 1.0, np.zeros((0, 3)), np.zeros((0,)), KEY)
  with pytest.raises(ValueError, match=r"y must have shape \(4,\)"):
    held_out.test_bpd(counting, 1.0, np.zeros((4, 3)), np.zeros((3,)), KEY)
  with pytest.raises(ValueError, match="batch_size must be a positive integer"):
    held_out.test_bpd(counting, 1.0, np.zeros((4, 3)), np.zeros((4,)), KEY, batch_size=0)
