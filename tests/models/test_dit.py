"""DiffusionTransformer: patch tokens, adaLN-Zero (exact zero at init, a numpy reference for the
block maths), bidirectional attention, time / class / position conditioning, bfloat16, remat,
argument checks, and a real learning check through the `gaussian_transformer` builder.

Everything is tiny (width 16, 4x4 images): compile time dominates on CPU, so the real init is
compiled once (the `net` fixture) and other shapes get parameter trees filled from numpy.
"Perturbed" parameters add N(0, 0.2^2) noise to every leaf of the real init, so the
zero-initialised adaLN and output layers are switched on and every path is live.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ardiff import build
from ardiff.configs.validation import ConfigError
from ardiff.data.base import Dataset
from ardiff.model_sections import diffusion_section, transformer_section
from ardiff.models.dit import DiffusionTransformer, DiTBlock, patchify, unpatchify
from ardiff.model_cache import model_inputs

CLASSES = 3


def _model(**kw) -> DiffusionTransformer:
  args = dict(width=16, depth=2, heads=2, num_classes=CLASSES)
  args.update(kw)
  return DiffusionTransformer(**args)


def _inputs(shape=(4, 4, 1), batch: int = 2, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  t = jnp.asarray(rng.uniform(0.05, 1.0, size=batch), jnp.float32)
  y = jnp.arange(batch, dtype=jnp.int32) % (CLASSES + 1)
  return x, t, y


def _perturb(params, seed: int = 1, scale: float = 0.2):
  """Every leaf plus N(0, scale^2) noise (numpy): the zero-init layers become non-zero."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [l + scale * rng.normal(size=l.shape).astype(np.float32)
                                   for l in leaves])


def _numpy_params(model, *inputs, seed: int = 0, scale: float = 0.2):
  """A parameter tree of the right structure filled with N(0, scale^2) from numpy (only the
  shapes are traced: no init is compiled)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), *inputs)
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype), shapes)


@pytest.fixture(scope="module")
def net():
  """A 4x4x1 patch-1 model, its init params and init output, perturbed params, jitted apply."""
  model = _model()
  x, t, y = _inputs()
  out, params = jax.jit(model.init_with_output)(jax.random.key(0), x, t, y)
  return model, params, out, _perturb(params), jax.jit(model.apply)


def test_patchify_matches_a_loop_and_inverts():
  x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
  for p in (1, 2):
    tokens = np.asarray(patchify(jnp.asarray(x), p))
    assert tokens.shape == (2, (4 // p) * (6 // p), p * p * 3)
    for bi in range(2):
      for row in range(4 // p):
        for col in range(6 // p):
          n = row * (6 // p) + col  # raster order over patches
          expected = x[bi, row * p:(row + 1) * p, col * p:(col + 1) * p, :].reshape(-1)
          np.testing.assert_array_equal(tokens[bi, n], expected)
    np.testing.assert_array_equal(np.asarray(unpatchify(jnp.asarray(tokens), 4, 6, p)), x)


def test_init_output_is_exactly_zero_with_the_input_shape(net):
  _, params, out, _, _ = net
  assert out.shape == (2, 4, 4, 1) and out.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # adaLN-Zero + zero output projection
  p = params["params"]
  for name in ("out", "final_adaln"):
    np.testing.assert_array_equal(np.asarray(p[name]["kernel"]), 0.0)
  np.testing.assert_array_equal(np.asarray(p["block_0"]["adaln"]["kernel"]), 0.0)
  # ... while the layers feeding them have a normal init.
  assert float(jnp.std(p["block_0"]["qkv"]["kernel"])) > 1e-2
  assert float(jnp.std(p["embed"]["kernel"])) > 1e-2
  assert p["pos_emb"].shape == (16, 16) and float(jnp.std(p["pos_emb"])) > 1e-3


def test_patch_2_shapes_and_tokens():
  model = _model(patch_size=2)
  x, t, y = _inputs((4, 6, 3))
  params = _numpy_params(model, x, t, y)
  out = jax.jit(model.apply)(params, x, t, y)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.isfinite(np.asarray(out)).all() and float(jnp.abs(out).max()) > 1e-3
  p = params["params"]
  assert p["pos_emb"].shape == (2 * 3, 16)  # (4/2) * (6/2) tokens
  assert p["embed"]["kernel"].shape == (2 * 2 * 3, 16) and p["out"]["kernel"].shape == (16, 12)


def test_one_optimiser_step_moves_the_output_off_zero(net):
  model, params, _, _, apply = net
  x, t, y = _inputs()
  target = jnp.asarray(np.random.default_rng(5).normal(size=x.shape), jnp.float32)
  tx = optax.adam(1e-2)

  @jax.jit
  def step(p):
    grads = jax.grad(lambda q: jnp.mean((model.apply(q, x, t, y) - target) ** 2))(p)
    updates, _ = tx.update(grads, tx.init(p))
    return optax.apply_updates(p, updates), grads

  new, grads = step(params)
  assert float(jnp.abs(apply(new, x, t, y)).max()) > 1e-3
  # Only the head had a gradient: behind the zero output projection everything is cut off.
  g = grads["params"]
  assert float(jnp.abs(g["out"]["kernel"]).max()) > 0
  np.testing.assert_array_equal(np.asarray(g["block_0"]["adaln"]["kernel"]), 0.0)
  np.testing.assert_array_equal(np.asarray(g["final_adaln"]["kernel"]), 0.0)


def _layer_norm(h):
  mu = h.mean(-1, keepdims=True)
  return (h - mu) / np.sqrt(h.var(-1, keepdims=True) + 1e-6)


def _gelu(x):  # flax's default gelu is the tanh approximation
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def test_block_matches_a_numpy_reference_of_adaln_zero():
  width, heads, n = 8, 2, 5
  block = DiTBlock(width, heads, mlp_ratio=2)
  rng = np.random.default_rng(0)
  h = rng.normal(size=(2, n, width)).astype(np.float32)
  c = rng.normal(size=(2, width)).astype(np.float32)
  params = _numpy_params(block, h, c, scale=0.5)
  got = np.asarray(jax.jit(block.apply)(params, h, c))

  p = jax.tree.map(np.asarray, params["params"])
  dense = lambda name, v: v @ p[name]["kernel"] + p[name]["bias"]
  silu_c = c / (1 + np.exp(-c))
  s1, a1, g1, s2, a2, g2 = np.split(dense("adaln", silu_c), 6, axis=-1)
  u = _layer_norm(h) * (1 + a1[:, None]) + s1[:, None]
  q, k, v = np.split(dense("qkv", u), 3, axis=-1)
  d = width // heads
  attn = np.zeros_like(h)
  for i in range(heads):
    sl = slice(i * d, (i + 1) * d)
    scores = q[..., sl] @ k[..., sl].transpose(0, 2, 1) / np.sqrt(d)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    attn[..., sl] = (w / w.sum(-1, keepdims=True)) @ v[..., sl]
  h1 = h + g1[:, None] * dense("proj", attn)
  u2 = _layer_norm(h1) * (1 + a2[:, None]) + s2[:, None]
  want = h1 + g2[:, None] * dense("fc2", _gelu(dense("fc1", u2)))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_attention_is_bidirectional(net):
  _, _, _, rough, apply = net
  x, t, y = _inputs()
  base = np.asarray(apply(rough, x, t, y)).reshape(2, 16)
  j = 6  # raster index (1, 2): pixels 0..5 come before it, 7..15 after
  changed = np.asarray(apply(rough, x.at[:, 1, 2, 0].add(1.0), t, y)).reshape(2, 16)
  diff = np.abs(changed - base)
  assert diff[:, :j].min() > 1e-5, diff  # a causal mask would leave these exactly unchanged
  assert diff[:, j + 1:].min() > 1e-5, diff


def test_time_and_class_conditioning_reach_the_output(net):
  _, _, _, rough, apply = net
  x, t, y = _inputs()
  base = np.asarray(apply(rough, x, t, y))
  other_t = np.asarray(apply(rough, x, t + 0.3, y))
  other_y = np.asarray(apply(rough, x, t, (y + 1) % (CLASSES + 1)))  # includes the null label
  for other in (other_t, other_y):
    assert np.abs(other - base).reshape(2, -1).max(-1).min() > 1e-3  # each example changes


def test_position_embeddings_break_permutation_equivariance(net):
  _, _, _, rough, apply = net
  x, t, y = _inputs()
  swap = lambda a: a.at[:, 0, 1].set(a[:, 3, 2]).at[:, 3, 2].set(a[:, 0, 1])
  gap = lambda p: float(jnp.abs(apply(p, swap(x), t, y) - swap(apply(p, x, t, y))).max())
  assert gap(rough) > 1e-3  # the swapped pixels are read at their new positions
  # Reference: without position embeddings attention over pixels is permutation-equivariant.
  no_pos = {"params": {**rough["params"], "pos_emb": jnp.zeros_like(rough["params"]["pos_emb"])}}
  assert gap(no_pos) < 1e-5


def test_bfloat16_compute_is_close_to_float32(net):
  _, _, _, rough, apply = net
  x, t, y = _inputs()
  bf16 = _model(dtype=jnp.bfloat16)
  # Parameters stay float32 (only the compute dtype changes).
  shapes = jax.eval_shape(bf16.init, jax.random.key(0), x, t, y)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  want = np.asarray(apply(rough, x, t, y))
  got = jax.jit(bf16.apply)(rough, x, t, y)
  assert got.dtype == jnp.float32
  # bf16 rounds to 8 significant bits (2^-8 ~ 0.4% relative) at every op, and the adaLN
  # scales (1 + a) amplify it: with these perturbed parameters the relative RMS error is
  # ~1% with no blocks and 2.1% at depth 2 (largest error 3.5% of max |output|). Tolerance:
  # 5% relative RMS. A float32 run agrees to ~1e-6.
  err = np.sqrt(np.mean((np.asarray(got) - want) ** 2) / np.mean(want ** 2))
  assert 0 < err < 0.05, err  # > 0: really computed in bfloat16


def test_remat_recomputes_blocks_with_the_same_output(net):
  _, _, _, rough, apply = net
  x, t, y = _inputs()
  model = _model(remat=True)
  # The gradient's program holds a checkpoint (remat) primitive only with remat on.
  checkpointed = lambda m: re.search(r"\b(remat\d*|checkpoint)\[", str(jax.make_jaxpr(
      jax.grad(lambda p: jnp.sum(m.apply(p, x, t, y) ** 2)))(rough))) is not None
  assert checkpointed(model) and not checkpointed(_model())
  # `train` goes through nn.remat as a static Python bool, and the maths is unchanged.
  np.testing.assert_allclose(np.asarray(jax.jit(model.apply)(rough, x, t, y)),
                             np.asarray(apply(rough, x, t, y)), rtol=1e-5, atol=1e-6)


def test_dropout_only_when_training(net):
  _, _, _, rough, apply = net
  x, t, y = _inputs()
  model = _model(dropout=0.5)
  run = jax.jit(lambda train, key: model.apply(rough, x, t, y, train=train,
                                               rngs={"dropout": key}), static_argnums=0)
  eval_out = np.asarray(run(False, jax.random.key(0)))
  np.testing.assert_allclose(eval_out, np.asarray(apply(rough, x, t, y)), rtol=1e-6, atol=1e-6)
  a, b = run(True, jax.random.key(0)), run(True, jax.random.key(1))
  assert float(jnp.abs(a - b).max()) > 1e-3 and float(jnp.abs(a - eval_out).max()) > 1e-3


def test_bad_arguments_are_named(net):
  _, params, _, _, _ = net
  x, t, y = _inputs()
  model = _model()
  with pytest.raises(ValueError, match="x must be"):
    model.apply(params, x[..., 0], t, y)
  with pytest.raises(ValueError, match="t must have shape"):
    model.apply(params, x, t[:1], y)
  with pytest.raises(ValueError, match="y must have shape"):
    model.apply(params, x, t, y[:, None])
  with pytest.raises(ValueError, match="patch_size=3"):
    _model(patch_size=3).init(jax.random.key(0), x, t, y)
  with pytest.raises(ValueError, match="heads=3 must divide width=16"):
    _model(heads=3).init(jax.random.key(0), x, t, y)


def _tiny_images(n: int = 32, levels: int = 5) -> Dataset:
  rng = np.random.default_rng(0)
  x = rng.integers(0, levels, (n, 4, 4, 1)).astype(np.uint8)
  y = rng.integers(0, CLASSES, n).astype(np.int32)
  return Dataset("tiny", "image", x, y, x[:4], y[:4], CLASSES, levels)


def test_builder_trains_a_diffusion_model_and_rejects_points():
  data = _tiny_images()
  section = transformer_section(width=32, depth=1, heads=2, dropout=0.0)
  process = build.build("gaussian_transformer", section, data,
                        diffusion=diffusion_section(num_timesteps=20))
  assert isinstance(process.model, DiffusionTransformer) and process.model.width == 32
  batch = {"x": jnp.asarray(model_inputs(process, data)), "y": data.y_train}
  # An rbg key: XLA:CPU compiles its initialisers faster than threefry's.
  params = jax.jit(process.init_params)(jax.random.key(0, impl="rbg"), batch)

  # One compiled program (compile time dominates): an Adam step of size lr that also returns
  # the loss at `key`; lr = 0 evaluates. The loss is the process's own (random t, noise and
  # label drop drawn from `key`); eval keys stay fixed so before/after see the same draws.
  adam = optax.scale_by_adam()

  @jax.jit
  def step(p, opt, key, lr):
    loss, grads = jax.value_and_grad(lambda q: process.loss(q, batch, key)[0])(p)
    updates, opt = adam.update(grads, opt)
    return jax.tree.map(lambda a, u: a - lr * u, p, updates), opt, loss

  opt = adam.init(params)
  eval_keys = jax.random.split(jax.random.key(99), 8)
  evaluate = lambda p: np.mean([float(step(p, opt, k, 0.0)[2]) for k in eval_keys])
  before = evaluate(params)
  np.testing.assert_allclose(before, 1.0, rtol=0.15)  # predicting eps = 0: E[eps^2] = 1
  for key in jax.random.split(jax.random.key(1), 50):
    params, opt, _ = step(params, opt, key, 3e-3)
  after = evaluate(params)
  assert after < 0.7 * before, (before, after)

  points = Dataset("pts", "points", np.zeros((8, 2), np.float32), np.zeros(8, np.int32),
                   np.zeros((2, 2), np.float32), np.zeros(2, np.int32), 2)
  with pytest.raises(ConfigError, match="gaussian_transformer"):
    build.build("gaussian_transformer", section, points, diffusion=diffusion_section())
