"""UNet: shapes at every dataset size, conditioning reaches the output, bad sizes fail clearly.

Compile time dominates on CPU (XLA compiles every random initialiser separately), so the real
`model.init` runs once, for the 8x8 network in the `digits_net` fixture; the 28x28 and 32x32
shape tests fill the parameter tree from numpy instead (only their `apply` is compiled).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.models import unet as unet_lib
from ardiff.models.embeddings import sinusoidal_embedding
from ardiff.models.unet import UNet, num_groups

NUM_CLASSES = 10


def _inputs(shape: tuple[int, ...], batch: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  t = jnp.asarray(rng.uniform(0.05, 1.0, size=batch), jnp.float32)
  y = jnp.arange(batch, dtype=jnp.int32) % NUM_CLASSES
  return x, t, y


def _tiny(**overrides) -> UNet:
  kwargs = dict(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, num_heads=2,
                num_classes=NUM_CLASSES)
  kwargs.update(overrides)
  return UNet(**kwargs)


def _numpy_params(model: UNet, x, t, y, seed: int = 0):
  """A parameter tree of the right structure, filled from numpy (fan-in scaled normals)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, t, y)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    if leaf.ndim >= 2:
      scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      scale = 0.1
    value = rng.normal(size=leaf.shape) * scale + (1.0 if "scale" in name else 0.0)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _perturb_output_conv(params, seed: int = 1):
  """Give the zero-initialised output conv random weights; every other layer keeps its init."""
  out = dict(params["params"]["out_conv"])
  out["kernel"] = jnp.asarray(
      0.1 * np.random.default_rng(seed).normal(size=out["kernel"].shape), jnp.float32)
  return {"params": {**params["params"], "out_conv": out}}


@pytest.fixture(scope="module")
def digits_net():
  """The real init of an 8x8x1 network, its output on the init params, and a jitted apply."""
  model = _tiny()
  x, t, y = _inputs((8, 8, 1))
  out, params = jax.jit(model.init_with_output)(jax.random.key(0, impl="rbg"), x, t, y)
  return model, params, out, jax.jit(model.apply)


def test_init_output_shape_and_zero_output_conv(digits_net):
  _, params, out, _ = digits_net
  assert out.shape == (2, 8, 8, 1) and out.dtype == jnp.float32
  # The output conv starts at zero, so the untrained network predicts exactly zero ...
  np.testing.assert_array_equal(np.asarray(out), 0.0)
  np.testing.assert_array_equal(np.asarray(params["params"]["out_conv"]["kernel"]), 0.0)
  # ... while the layers before it have a normal (non-zero) init.
  assert float(jnp.std(params["params"]["ResBlock_0"]["Conv_1"]["kernel"])) > 1e-2
  # The null label has its own embedding row (num_classes + 1 rows in all).
  assert params["params"]["class_embed"]["embedding"].shape[0] == NUM_CLASSES + 1


@pytest.mark.parametrize("shape, channel_mult", [
    ((28, 28, 1), (1, 2, 2)),  # MNIST: 28 -> 14 -> 7
    ((32, 32, 3), (1, 2)),
])
def test_output_shape_matches_input(shape, channel_mult):
  model = _tiny(base_channels=4, channel_mult=channel_mult)
  x, t, y = _inputs(shape)
  out = jax.jit(model.apply)(_numpy_params(model, x, t, y), x, t, y)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(np.asarray(out)))
  assert float(jnp.std(out)) > 1e-3


def test_out_channels_override():
  model = _tiny(out_channels=2)
  x, t, y = _inputs((8, 8, 1))
  out = jax.eval_shape(model.init_with_output, jax.random.key(0), x, t, y)[0]
  assert out.shape == (2, 8, 8, 2)


def test_time_changes_output(digits_net):
  _, params, _, apply = digits_net
  params = _perturb_output_conv(params)
  x, t, y = _inputs((8, 8, 1))
  a = apply(params, x, t, y)
  assert np.all(np.isfinite(np.asarray(a)))
  assert float(jnp.max(jnp.abs(a - apply(params, x, 0.5 * t, y)))) > 1e-3
  # Each example's output depends only on its own t: change example 0's t only.
  c = apply(params, x, t.at[0].set(1.0 - t[0]), y)
  assert float(jnp.max(jnp.abs(a[0] - c[0]))) > 1e-3
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(c[1]), atol=1e-5)


def test_label_changes_output_and_null_label_works(digits_net):
  _, params, _, apply = digits_net
  params = _perturb_output_conv(params)
  x, t, y = _inputs((8, 8, 1))
  a = apply(params, x, t, y)
  b = apply(params, x, t, (y + 1) % NUM_CLASSES)
  null = apply(params, x, t, jnp.full_like(y, NUM_CLASSES))
  assert float(jnp.max(jnp.abs(a - b))) > 1e-3
  assert null.shape == x.shape and np.all(np.isfinite(np.asarray(null)))
  assert float(jnp.max(jnp.abs(a - null))) > 1e-3


def test_one_training_step_makes_output_depend_on_time(digits_net):
  """Without hand-perturbing: one SGD step moves the zero output conv and t reaches the output."""
  model, params, _, _ = digits_net
  x, t, y = _inputs((8, 8, 1))

  # With the output conv at zero, every earlier layer's gradient is exactly zero at the first
  # step, so a step on the output conv alone is the full first SGD step (and compiles faster).
  def with_out(out):
    return {"params": {**params["params"], "out_conv": out}}

  @jax.jit
  def step_then_compare(out):
    grads = jax.grad(lambda o: jnp.mean((model.apply(with_out(o), x, t, y) - x) ** 2))(out)
    stepped = with_out(jax.tree.map(lambda p, g: p - 0.1 * g, out, grads))
    return model.apply(stepped, x, t, y), model.apply(stepped, x, 0.5 * t, y)

  a, b = step_then_compare(params["params"]["out_conv"])
  assert float(jnp.max(jnp.abs(a))) > 1e-5
  assert float(jnp.max(jnp.abs(a - b))) > 1e-6


def test_dropout_is_random_in_training(digits_net):
  _, params, _, _ = digits_net
  params = _perturb_output_conv(params)
  model = _tiny(dropout=0.5)  # dropout has no parameters: the fixture's params fit
  x, t, y = _inputs((8, 8, 1))
  apply = jax.jit(functools.partial(model.apply, train=True))
  a = apply(params, x, t, y, rngs={"dropout": jax.random.key(1)})
  b = apply(params, x, t, y, rngs={"dropout": jax.random.key(2)})
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_bad_spatial_size_raises():
  model = _tiny(channel_mult=(1, 2, 2, 2))
  x, t, y = _inputs((28, 28, 1))
  with pytest.raises(ValueError, match=r"channel_mult=\(1, 2, 2, 2\).*28x28"):
    jax.eval_shape(model.init, jax.random.key(0), x, t, y)


def test_bad_heads_and_batch_raise():
  x, t, y = _inputs((8, 8, 1))
  with pytest.raises(ValueError, match="num_heads=3"):
    jax.eval_shape(_tiny(num_heads=3).init, jax.random.key(0), x, t, y)
  with pytest.raises(ValueError, match="t and y must have shape"):
    jax.eval_shape(_tiny().init, jax.random.key(0), x, t[:1], y)


def test_num_groups_divides_channels():
  for c in range(1, 300):
    g = num_groups(c)
    assert c % g == 0 and 1 <= g <= 32
  assert num_groups(128) == 32 and num_groups(64) == 16 and num_groups(8) == 2


def test_unet_uses_the_shared_time_embedding():
  # One sinusoidal embedding for every denoiser; the UNet must not carry its own copy.
  assert unet_lib.sinusoidal_embedding is sinusoidal_embedding
  assert not hasattr(unet_lib, "timestep_embedding")


@pytest.mark.parametrize("dim", [6, 7])
def test_time_embedding_matches_formula(dim):
  """[sin | cos] of 1000 t f_i with f_i = 10000^(-i / half), zero-padded to an odd dim."""
  half = dim // 2
  freqs = 10_000.0 ** (-np.arange(half) / half)
  for dtype in (jnp.float32, jnp.bfloat16):  # features in float32 whatever t's dtype
    t = jnp.asarray([0.0, 0.1, 0.5, 1.0], dtype)
    emb = sinusoidal_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == jnp.float32
    args = 1000.0 * np.asarray(t, np.float64)[:, None] * freqs[None, :]  # t as rounded to dtype
    expected = np.concatenate([np.sin(args), np.cos(args), np.zeros((4, dim % 2))], -1)
    np.testing.assert_allclose(np.asarray(emb), expected, atol=2e-4)
  # t = 0: every sine is 0 and every cosine 1, so the order is sin first, then cos.
  np.testing.assert_array_equal(np.asarray(sinusoidal_embedding(jnp.zeros(1), dim))[0],
                                [0.0] * half + [1.0] * half + [0.0] * (dim % 2))
