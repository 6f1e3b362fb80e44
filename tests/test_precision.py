"""bfloat16 compute with float32 parameters: what stays float32, and what it costs in quality.

Every model (MLP, transformer, UNet) runs its matmuls and convolutions in bf16 with the same
float32 parameters; training keeps parameters and optimiser state float32. Quality: digits
raster AR test NLL 1.8476 vs 1.8489 bits/pixel (float32 vs bfloat16, see the last test).
Measured on the spiral (MLP width 64, depth 2, T=1000, batch 256, AdamW, EMA 0.99; the same
seed, batches, timesteps and noise for both dtypes; 2-core CPU):
  500 steps:  mean loss over the last 100 steps 0.29151 float32 vs 0.29157 bfloat16 (relative
              2e-4); sliced W1 of 1000 DDIM-50 samples to 1000 held-out points 0.0553 vs 0.0541;
              MMD 0.0103 vs 0.0103.
  3000 steps: loss 0.26919 vs 0.26919 (relative 3e-5); sliced W1 0.0346 vs 0.0325.
Reference sliced W1: 1000 training points 0.027 (the sample-size floor), N(0, I) noise 0.34.
Per-step losses differ by 6e-4 relative (median; at most 5e-3): the loss is dominated by the
irreducible noise, which bf16 rounding barely moves. On this CPU bf16 is
emulated and slower than float32; the speed-up is an accelerator matter.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.data.base import batch_indices
from ardiff.data.spiral import spiral_dataset
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.metrics.points import sliced_wasserstein
from ardiff.models.mlp import MLPDenoiser
from ardiff.precision import compute_dtype
from ardiff.train import TrainConfig, init_state, make_optimizer, train, train_step
from tests.train.helpers import tiny_setup


def _float_dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


def test_compute_dtype_names():
  assert compute_dtype("float32") == jnp.float32
  assert compute_dtype("bfloat16") == jnp.bfloat16
  for bad in ("float16", "bf16", "", None):
    with pytest.raises(ValueError, match=r"model\.dtype must be one of .*got"):
      compute_dtype(bad, key="model.dtype")


def test_bfloat16_model_runs_matmuls_in_bf16_with_float32_params_and_output():
  depth = 2
  f32 = MLPDenoiser(3, width=32, depth=depth)
  bf16 = f32.clone(dtype=compute_dtype("bfloat16"))
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (64, 2))
  t = jax.random.uniform(k[1], (64,), minval=0.01)
  y = jnp.arange(64) % 4  # includes the null label 3
  params = f32.init(k[2], x, t, y)
  bf16_params = bf16.init(k[2], x, t, y)
  # Same float32 parameters whatever the compute dtype.
  assert _float_dtypes(bf16_params) == {"float32"}
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(bf16_params)):
    np.testing.assert_array_equal(a, b)

  jaxpr = jax.make_jaxpr(lambda p: bf16.apply(p, x, t, y))(params).jaxpr
  dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 3 + 2 * depth  # time and input projections, 2 per block, output
  assert all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)

  out32, out16 = f32.apply(params, x, t, y), bf16.apply(params, x, t, y)
  assert out16.dtype == jnp.float32
  err = float(jnp.max(jnp.abs(out16 - out32)))
  # bf16 keeps 8 significant bits (unit roundoff 2^-8 ~ 0.004 per op): visibly inexact (measured
  # 0.014 of an output range 1.5), but close to the float32 computation.
  assert 1e-4 < err < 0.05 * float(jnp.max(jnp.abs(out32))), err


def _eqns(jaxpr):
  """Every equation of a jaxpr, including those inside pjit/remat/scan sub-jaxprs."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _eqns(sub)


def _matmul_input_dtypes(fn, *args) -> list[str]:
  """Input dtypes of every dot_general / convolution fn traces to."""
  return [str(v.aval.dtype) for e in _eqns(jax.make_jaxpr(fn)(*args).jaxpr)
          if e.primitive.name in ("dot_general", "conv_general_dilated") for v in e.invars]


def _transformer_case(causal):
  """A model, its inputs, an init key, and random parameters filled from numpy (no compile)."""
  from ardiff.models.transformer import Transformer
  from tests.models.test_transformer import rough_params

  model = Transformer(17, 64, 10, width=32, depth=2, heads=4, causal=causal)
  k = jax.random.split(jax.random.key(0), 2)
  tokens = jax.random.randint(k[0], (8, 64), 0, 17)
  y = jnp.arange(8) % 11  # includes the null label 10
  return model, (tokens, y), k[1], rough_params(model, scale=0.1)


def _unet_case(_):
  from ardiff.models.unet import UNet
  from tests.models.test_unet import _numpy_params

  model = UNet(8, channel_mult=(1, 2), num_res_blocks=1, num_classes=10)
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (4, 8, 8, 1))
  t = jax.random.uniform(k[1], (4,), minval=0.01)
  y = jnp.arange(4)
  # _numpy_params fills the zero-initialised output conv too, so the output is not all 0.
  return model, (x, t, y), k[2], _numpy_params(model, x, t, y)


@pytest.mark.parametrize("case,arg", [(_transformer_case, True), (_transformer_case, False),
                                      (_unet_case, None)],
                         ids=["causal-transformer", "bidirectional-transformer", "unet"])
def test_bfloat16_image_models_compute_in_bf16_with_float32_params(case, arg):
  f32, inputs, key, params = case(arg)
  bf16 = f32.clone(dtype=jnp.bfloat16)
  # Shapes and dtypes from eval_shape (compiling a UNet's init costs ~15 s on CPU); the values
  # are random: the dtype changes the arithmetic, not the parameters.
  shapes = jax.eval_shape(f32.init, key, *inputs)
  assert jax.eval_shape(bf16.init, key, *inputs) == shapes
  assert _float_dtypes(shapes) == {"float32"}

  dtypes32 = _matmul_input_dtypes(lambda p: f32.apply(p, *inputs), params)
  dtypes16 = _matmul_input_dtypes(lambda p: bf16.apply(p, *inputs), params)
  assert dtypes32 and set(dtypes32) == {"float32"}
  assert len(dtypes16) == len(dtypes32) and set(dtypes16) == {"bfloat16"}

  out32, out16 = jax.jit(f32.apply)(params, *inputs), jax.jit(bf16.apply)(params, *inputs)
  assert out16.dtype == jnp.float32 and out16.shape == out32.shape
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  # A few bf16 roundings (unit roundoff 2^-8) per layer: inexact, but close.
  assert 1e-4 < rel < 0.05, rel


def test_bfloat16_kv_cache_decoding_matches_the_bf16_forward_pass():
  from ardiff.models.transformer import init_cache

  f32, (tokens, y), key, _ = _transformer_case(True)
  model = f32.clone(dtype=jnp.bfloat16)
  params = jax.jit(model.init)(key, tokens, y)
  cache = init_cache(model, tokens.shape[0])
  assert {str(a.dtype) for a in jax.tree.leaves(cache)} == {"bfloat16"}
  step = jax.jit(lambda prev, pos, cache: model.apply(params, prev, pos, cache, y,
                                                      method=model.decode_step))
  logits, prev = [], tokens[:, 0]
  for pos in range(tokens.shape[1]):
    out, cache = step(prev, pos, cache)
    logits.append(out)
    prev = tokens[:, pos]
  full32 = jax.jit(f32.apply)(params, tokens, y)
  full16 = jax.jit(model.apply)(params, tokens, y)
  step16 = jnp.stack(logits, axis=1)
  assert step16.dtype == jnp.float32
  # Decoding and the parallel pass round differently in bf16; both stay near float32.
  scale = float(jnp.max(jnp.abs(full32)))
  assert float(jnp.max(jnp.abs(step16 - full16))) < 0.05 * scale
  assert float(jnp.max(jnp.abs(step16 - full32))) < 0.05 * scale


def test_bfloat16_training_keeps_params_and_optimizer_state_float32(tmp_path):
  process, data, cfg = tiny_setup(steps=4)
  process = dataclasses.replace(process, model=process.model.clone(dtype=jnp.bfloat16))
  state = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  for part in (state.params, state.ema_params, state.opt_state):
    assert _float_dtypes(part) == {"float32"}
  losses = [json.loads(line)["loss"] for line in open(tmp_path / "metrics.jsonl")]
  assert len(losses) == 4 and np.all(np.isfinite(losses))
  # The checkpoint restores float32 too.
  again = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  assert _float_dtypes(again.opt_state) == {"float32"}


STEPS, BATCH, LAST = 500, 256, 100


def _train(process, x_train, y_train, cfg: TrainConfig):
  """`train`'s step and batches without checkpoints: init and a scan over every step in one
  compiled function (compiling dominates the cost). Returns the state and per-step losses."""
  tx = make_optimizer(cfg)
  idx = np.stack([batch_indices(cfg.seed, s, cfg.batch_size, len(x_train))
                  for s in range(cfg.steps)])

  @jax.jit
  def run(xs, ys):
    init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))
    state = init_state(process, tx, {"x": xs[0], "y": ys[0]}, init_key)

    def body(state, inputs):
      step, x, y = inputs
      state, metrics = train_step(process, tx, cfg.ema_decay, state, {"x": x, "y": y},
                                  jax.random.fold_in(loop_key, step))
      return state, metrics["loss"]

    return jax.lax.scan(body, state, (jnp.arange(cfg.steps), xs, ys))

  state, losses = run(x_train[idx], y_train[idx])
  return state, np.asarray(losses)


def _train_and_sample(dtype, data):
  process = GaussianDiffusion(MLPDenoiser(3, width=64, depth=2, dtype=dtype), 3,
                              num_timesteps=1000, p_uncond=0.3, clip_x0=1.5, data_shape=(2,))
  cfg = TrainConfig(steps=STEPS, batch_size=BATCH, learning_rate=3e-3, warmup_steps=50,
                    ema_decay=0.99)
  state, losses = _train(process, data.x_train, data.y_train, cfg)
  samples = process.sample(state.ema_params, jax.random.key(1), np.full(1000, 3), "ddim:50")
  return state, losses, np.asarray(samples)


def test_bfloat16_trains_the_spiral_as_well_as_float32():
  data = spiral_dataset(num_train=4096, num_test=1000, noise=0.03)
  results = {}
  for name in ("float32", "bfloat16"):
    state, losses, samples = _train_and_sample(compute_dtype(name), data)
    assert _float_dtypes((state.params, state.opt_state)) == {"float32"}
    results[name] = (float(np.mean(losses[-LAST:])), sliced_wasserstein(samples, data.x_test))
  floor = sliced_wasserstein(data.x_train[:1000], data.x_test)
  print("last-100 mean loss, sliced W1 (floor %.4f):" % floor, results)
  (loss32, sw32), (loss16, sw16) = results["float32"], results["bfloat16"]
  assert loss32 < 0.4  # learned something (an untrained net's loss is ~1.5)
  assert abs(loss16 - loss32) <= 0.02 * loss32
  # Sample quality: bf16 within 25% of float32's distance to held-out data (measured: 0.0556 vs
  # 0.0553; the floor is 0.027 and Gaussian noise scores 0.34).
  assert sw32 < 3 * floor
  assert sw16 <= 1.25 * sw32


def test_bfloat16_trains_digits_to_the_same_likelihood_as_float32():
  """Raster AR (causal transformer) on the 8x8 digits; quality = exact test NLL in bits/pixel.

  Measured (width 32, depth 2, 400 steps of batch 64, EMA params): test NLL 1.8476 bits per
  pixel float32 vs 1.8489 bfloat16 (relative 7e-4); uniform over 17 levels is log2(17) = 4.09.
  """
  from ardiff.metrics import held_out
  from ardiff.data import load_dataset
  from ardiff.data.levels import to_tokens as tokens
  from ardiff.models.transformer import Transformer
  from ardiff.processes.autoregressive.raster import RasterAR

  data = load_dataset("digits")
  cfg = TrainConfig(steps=400, batch_size=64, learning_rate=3e-3, warmup_steps=40,
                    ema_decay=0.99)
  bpd = {}
  for name in ("float32", "bfloat16"):
    process = RasterAR(Transformer(17, 64, 10, width=32, depth=2, heads=4,
                                   dtype=compute_dtype(name)), p_uncond=0.1)
    state, losses = _train(process, tokens(data.x_train), data.y_train, cfg)
    assert _float_dtypes((state.params, state.opt_state)) == {"float32"}
    assert np.all(np.isfinite(losses))
    bpd[name] = held_out.test_bpd(process, state.ema_params, tokens(data.x_test), data.y_test,
                                 jax.random.key(0))
  print("test bits per pixel:", bpd)
  assert bpd["float32"] < 0.5 * np.log2(17)  # learned (uniform: 4.09 bits)
  assert abs(bpd["bfloat16"] - bpd["float32"]) < 0.02 * bpd["float32"]
