"""One compiled program per sampler, not per step count: sweeps over step counts, spacings and
option values compile the sampling loop once (counted with `jax.monitoring`, as the benchmark
does). Odd batch sizes keep other tests' programs out of the count."""

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.bench.compiles import compile_log
from ardiff.models.transformer import Transformer
from ardiff.processes.autoregressive.order_agnostic import OrderAgnosticAR
from ardiff.processes.gaussian.samplers import sample
from ardiff.processes.gaussian.schedules import make_schedule

SCHEDULE = make_schedule("cosine", 1000)


def toy_eps(params, x, t, cond):
  """eps of N(0, I) data: x itself (any model will do; only the programs are counted)."""
  return x * params


def test_a_sweep_over_steps_spacings_and_eta_compiles_one_gaussian_program():
  x = jax.random.normal(jax.random.key(0), (13, 2))
  with compile_log() as log:
    outs = [sample(toy_eps, jnp.float32(1.0), SCHEDULE, x, jax.random.key(1), sampler="ddim",
                   num_steps=n, spacing=spacing, eta=eta)
            for n in (1, 2, 7, 64, 1000) for spacing, eta in (("uniform", 0.0), ("karras", 1.0))]
  assert log.count("_sample") == 1, log.by_name()
  assert all(np.isfinite(np.asarray(o)).all() for o in outs)
  with compile_log() as log:  # the trajectory's shape is n: the static scan, per n
    for n in (3, 4):
      sample(toy_eps, jnp.float32(1.0), SCHEDULE, x, jax.random.key(1), sampler="ddim",
             num_steps=n, return_trajectory=True)
  assert log.count("_sample") == 2, log.by_name()


def test_every_ardm_plan_shares_one_decoder_program():
  model = Transformer(vocab_size=4, seq_len=16, num_classes=2, width=16, depth=1, heads=2,
                      causal=False)
  process = OrderAgnosticAR(model, data_shape=(4, 4))
  params = process.init_params(jax.random.key(0), {"x": jnp.zeros((1, 16), jnp.int32),
                                                   "y": jnp.zeros((1,), jnp.int32)})
  labels = jnp.zeros((11,), jnp.int32)
  with compile_log() as log:
    for spec in ("ardm", "ardm:k=3", "ardm:k=5:order=contiguous", "ardm:sizes=(1,7,8)"):
      tokens = np.asarray(process.sample(params, jax.random.key(1), labels, spec))
      assert (tokens < 4).all()  # every position revealed
  assert log.count("_parallel") == 1, log.by_name()
  with compile_log() as log:
    for spec in ("confidence:2", "confidence:5:temperature=0.5"):
      process.sample(params, jax.random.key(1), labels, spec)
  assert log.count("_confidence") == 1, log.by_name()
