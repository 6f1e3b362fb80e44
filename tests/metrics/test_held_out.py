"""`held_out.test_bpd`: one call for every process with a likelihood, equal to each process's
own held-out bits (the entry points it replaces, or their formula written out), batched with
one compiled program, and a clear error for a process without a likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff import build
from ardiff.metrics import held_out
from ardiff.processes.autoregressive import evaluate, fixed_order, objectives, orders, upscale
from ardiff.processes.gaussian import likelihood
from ardiff.runs import TOKEN_KINDS, model_inputs
from tests.processes.test_contract import LEVELS, tiny_images

N = 6  # examples scored
KEY = jax.random.key(7)


def _tiny(kind: str):
  """(process, params, inputs [N, ...], labels [N]) for a registered kind, tiny random images."""
  section, extra, _ = build.BUILDERS.get(kind).example()
  data = tiny_images()
  process = build.build(kind, section, data, **extra)
  x = model_inputs(kind, data)
  params = process.init_params(jax.random.key(0), {"x": x[:2], "y": data.y_train[:2]})
  return process, params, x[:N], data.y_train[:N], data.x_train[:N]


def _upscale_reference(process, params, x, y, key, batch_size):
  """The upscale bound written out: one random order per stage (fold_in(batch key, s))."""
  nll = []
  for i, start in enumerate(range(0, len(x), batch_size)):
    k = jax.random.fold_in(key, i)
    xb, yb = jnp.asarray(x[start:start + batch_size]), jnp.asarray(y[start:start + batch_size])
    stage_orders = jnp.stack([orders.random_orders(jax.random.fold_in(k, s), len(xb),
                                                   process.seq_len)
                              for s in range(process.layout.num_stages)])
    nll.append(upscale.upscale_order_nll(lambda t, lab: process.model.apply(params, t, lab),
                                         xb, yb, stage_orders, process.layout))
  return float(objectives.nats_to_bpd(np.concatenate(nll).mean(), process.seq_len))


def _old(kind, process, params, x, y, levels):
  """Each kind's own held-out bits before test_bpd (batches of 3, or 4 with a remainder)."""
  if kind == "raster":
    return evaluate.raster_test_bpd(process, params, x, y, batch_size=4), 4
  if kind in ("ardm", "masked"):  # masked diffusion's ELBO is the ARDM bound
    return evaluate.ardm_test_bpd(process, params, x, y, KEY, batch_size=3), 3
  if kind == "raster_bidirectional":
    return fixed_order.exact_test_bpd(process, params, x, y, batch_size=4), 4
  if kind == "upscale":
    return _upscale_reference(process, params, x, y, KEY, 3), 3
  if kind == "gaussian_learned_var":
    return process.bpd(params, levels, y, KEY, num_t_samples=3, batch_size=4)["total"], 4
  return likelihood.bpd(process, params, levels, y, LEVELS, KEY, num_t_samples=3,
                        batch_size=4)["total"], 4


@pytest.mark.parametrize("kind", ["raster", "ardm", "masked", "raster_bidirectional", "upscale",
                                  "gaussian", "gaussian_transformer", "gaussian_learned_var"])
def test_test_bpd_equals_each_processes_own_held_out_bits(kind):
  process, params, x, y, levels = _tiny(kind)
  old, batch_size = _old(kind, process, params, x, y, levels)
  options = {"num_t_samples": 3} if kind.startswith("gaussian") else {}
  new = held_out.test_bpd(process, params, x, y, KEY, batch_size=batch_size, **options)
  np.testing.assert_allclose(new, old, rtol=1e-5)
  # An untrained token model is near uniform on 5 levels (log2 5 bits); an untrained
  # denoiser's bound is far looser, but still a positive number of bits.
  assert 0.5 < new < 20 if kind in TOKEN_KINDS else 0 < new < np.inf
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
