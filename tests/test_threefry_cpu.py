"""The straight-line CPU lowering of Threefry-2x32 (ardiff/threefry_cpu.py) draws JAX's bits.

tests/conftest.py turns it on for the session, as the command line does, so every test here
runs under it: the published known answers, an independent NumPy transcription (a round
counter instead of blocks), and draws pinned under JAX's own rolled lowering.
"""

import jax
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

# Known answers of Threefry-2x32 with 20 rounds, (key, counter) -> output, from the Random123
# distribution's kat_vectors (also JAX's own test of its lowering).
KNOWN = [((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6b200159, 0x99ba4efe)),
         ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
         ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0))]


def _reference(key, x0, x1):
  """Threefry-2x32-20 in Python integers: round i rotates by R[i % 8], and after every fourth
  round injects subkey s = (i + 1) / 4."""
  rotations = (13, 15, 26, 6, 17, 29, 16, 24)
  mask = 0xffffffff
  k = (key[0], key[1], key[0] ^ key[1] ^ 0x1BD11BDA)
  out0, out1 = np.empty_like(x0), np.empty_like(x1)
  for idx, (a, b) in enumerate(zip(x0.tolist(), x1.tolist())):
    a, b = (a + k[0]) & mask, (b + k[1]) & mask
    for i in range(20):
      a = (a + b) & mask
      r = rotations[i % 8]
      b = ((b << r) | (b >> (32 - r))) & mask
      b ^= a
      if i % 4 == 3:
        s = (i + 1) // 4
        a = (a + k[s % 3]) & mask
        b = (b + k[(s + 1) % 3] + s) & mask
    out0[idx], out1[idx] = a, b
  return out0, out1


def test_the_cpu_program_is_straight_line():
  text = jax.jit(threefry_2x32).lower(np.zeros(2, np.uint32), np.zeros(8, np.uint32)).as_text()
  assert "stablehlo.add" in text and "stablehlo.while" not in text  # JAX's CPU rule: a loop


@pytest.mark.parametrize("key,counter,expected", KNOWN)
def test_known_answers(key, counter, expected):
  out = jax.jit(threefry_2x32)(np.array(key, np.uint32), np.array(counter, np.uint32))
  assert tuple(int(v) for v in np.asarray(out)) == expected


def test_random_inputs_match_an_independent_transcription():
  rng = np.random.default_rng(0)
  hash_pair = jax.jit(lambda k, a, b: jax.extend.random.threefry2x32_p.bind(k[0], k[1], a, b))
  for n in (1, 7, 64):
    key = rng.integers(0, 2**32, 2, dtype=np.uint32)
    x0, x1 = (rng.integers(0, 2**32, n, dtype=np.uint32) for _ in range(2))
    got = [np.asarray(v) for v in hash_pair(key, x0, x1)]
    want = _reference(key.tolist(), x0, x1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_draws_equal_those_pinned_under_jaxs_own_lowering():
  """Recorded with jax 0.10.2's default CPU lowering (the rolled loop), in a process without
  this one: the bits, normals, a split and a permutation are unchanged."""
  bits = np.asarray(jax.random.bits(jax.random.key(0), (4,)))
  assert [hex(v) for v in bits.tolist()] == ["0xf29a4fa7", "0xfa843692", "0x55110e28",
                                             "0x77faa835"]
  normal = np.asarray(jax.random.normal(jax.random.key(1), (3,))).view(np.uint32)
  assert [hex(v) for v in normal.tolist()] == ["0xbe1e24c8", "0x3dad7b02", "0xbe0b3e78"]
  split = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(2))))
  assert split.tolist() == [[1821159224, 3364244817], [637334850, 3278974502]]
  assert np.asarray(jax.random.permutation(jax.random.key(3), 8)).tolist() == [0, 5, 6, 7, 4,
                                                                             2, 1, 3]


def test_flop_counts_are_those_of_jaxs_own_lowering():
  """Training budgets, and so every cached model's key, follow XLA's FLOP count of the train
  step: it is made with JAX's own CPU lowering (`jax_own_lowering`), which the straight-line
  one would raise (XLA counts the rolled loop's body once)."""
  import functools

  from ardiff import build, parallel
  from ardiff.data import load_dataset
  from ardiff.data.levels import to_tokens
  from ardiff.presets import image_config
  from ardiff.train import TrainConfig, make_optimizer, step_flops, train_step_flops
  from ardiff.train.programs import state_target
  from ardiff.train.step import train_step

  c = image_config("small", ar=True)
  c.ar.update(width=16, depth=1, heads=2)  # dropout 0.1: random bits in the step
  data = load_dataset("digits")
  raster = build.build("raster", c.ar, data, c.dtype)
  cfg = TrainConfig(steps=10, batch_size=8)
  x = to_tokens(data.x_train)
  # Recorded with jax 0.10.2 in a process that never replaced JAX's lowering.
  assert train_step_flops(raster, x, data.y_train, cfg) == 20303136.0
  mesh = parallel.data_mesh()
  batch = parallel.put_global_batch({"x": x[:8], "y": data.y_train[:8]}, mesh)
  key = jax.random.key(0)
  step = jax.jit(functools.partial(train_step, raster, make_optimizer(cfg), cfg.ema_decay))
  straight_line = step_flops(step.lower(state_target(raster, cfg, batch, key, mesh), batch, key))
  assert straight_line > 20303136.0 * 1.01
