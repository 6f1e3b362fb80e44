"""Threefry-2x32 lowered straight-line on the CPU: the same random bits, compiled far faster.

Every random draw in JAX (parameter initialisers, dropout masks, diffusion noise, random
orders, key splits) is the Threefry-2x32 hash (Salmon et al., "Parallel random numbers: as easy
as 1, 2, 3", SC 2011): 20 rounds of add / rotate / xor on pairs of uint32 words, with a key
injection after every 4 rounds. On CPU, JAX lowers each draw as a rolled loop (a `fori_loop`
of 5 iterations of 4 rounds); on TPU and GPU it emits the 20 rounds straight-line. XLA:CPU
compiles the rolled loops slowly, and a program holds one per draw: measured on the 2-core CPU
(load ~9, one process, same programs), a program of 20 `jax.random.normal` draws compiles in
17 s straight-line against 168 s rolled, and the digits-smoke UNet's parameter initialiser in
15 s against 27 s (docs/benchmarks/suite.md has the suite-wide effect).

`use_straight_line_threefry()` registers the straight-line form as the CPU lowering of JAX's
`threefry2x32_p`. The hash is integer arithmetic, so the bits, and every number drawn from
them, are identical (tests/test_threefry_cpu.py checks the published known answers, a NumPy
transcription on random inputs, and draws pinned under JAX's own lowering). Only CPU lowering
changes: programs exported for TPU and GPU are untouched. Like the compilation cache, only the
command line (`ardiff.cli.main`) and the test session turn it on; importing the library
changes nothing in JAX.

FLOP counts must not move with it: XLA's cost analysis counts a loop's body once, so the
rolled hash adds a fifth of its integer ops to a step's count and the straight-line one all of
them (+4.0% for the digits raster AR step, +2.5% for the UNet), and every training budget, and
with it every cached model's key, follows that count. `jax_own_lowering()` lowers with JAX's
rule again for the programs whose FLOPs are counted (`ardiff.train.programs`).
"""

from __future__ import annotations

import contextlib

import numpy as np

# The rotation amounts of rounds 1-4 and 5-8 (they alternate), and the key-schedule parity
# constant, from the Threefry specification.
ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
KEY_PARITY = 0x1BD11BDA


def threefry2x32(key1, key2, x1, x2):
  """Threefry-2x32 with 20 rounds on uint32 arrays (broadcast together): the pair of hashed
  words. Works on jax arrays (a lowering) and NumPy arrays (uint32 wraps around) alike."""
  ks = (key1, key2, key1 ^ key2 ^ np.uint32(KEY_PARITY))
  x = [x1 + ks[0], x2 + ks[1]]
  for block in range(5):
    for r in ROTATIONS[block % 2]:
      x[0] = x[0] + x[1]
      x[1] = (x[1] << np.uint32(r)) | (x[1] >> np.uint32(32 - r))
      x[1] = x[0] ^ x[1]
    # Key injection: subkey s = block + 1 is (ks[s % 3], ks[(s + 1) % 3] + s).
    x[0] = x[0] + ks[(block + 1) % 3]
    x[1] = x[1] + ks[(block + 2) % 3] + np.uint32(block + 1)
  return x[0], x[1]


# JAX's CPU rule entry and ours, once replaced (the registry is JAX's process-wide table).
_ENTRIES: dict[str, object] = {}


def use_straight_line_threefry() -> bool:
  """Lower JAX's threefry2x32 primitive on the CPU as `threefry2x32` above (idempotent); True
  if it is in place. Call before the programs it should speed up are first compiled. A JAX
  without the rule table this reads keeps its own lowering (False): only compile time is lost.
  """
  table = _cpu_rules()
  if table is None:
    return False
  if "ours" not in _ENTRIES:
    from jax.extend.random import threefry2x32_p
    from jax.interpreters import mlir

    _ENTRIES["jax"] = table.get(threefry2x32_p)
    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(_traced, multiple_results=True),
                           platform="cpu")
    _ENTRIES["ours"] = table[threefry2x32_p]
  return True


@contextlib.contextmanager
def jax_own_lowering():
  """Programs lowered inside use JAX's own CPU threefry rule (a no-op if it was never
  replaced). Lower a freshly traced function inside: JAX caches lowerings by jaxpr, so a
  function already lowered outside would come back as it was."""
  table = _cpu_rules()
  if "ours" not in _ENTRIES or table is None:
    yield
    return
  from jax.extend.random import threefry2x32_p

  _put(table, threefry2x32_p, _ENTRIES["jax"])
  try:
    yield
  finally:
    _put(table, threefry2x32_p, _ENTRIES["ours"])


def _put(table, primitive, entry) -> None:
  if entry is None:
    table.pop(primitive, None)
  else:
    table[primitive] = entry


def _cpu_rules():
  """JAX's table of CPU lowering rules (private: read, and written back only as it was)."""
  from jax.interpreters import mlir

  return getattr(mlir, "_platform_specific_lowerings", {}).get("cpu")


def _traced(key1, key2, x1, x2):
  return tuple(threefry2x32(key1, key2, x1, x2))
