"""`ardiff bench accelerator`: accept a new GPU or TPU in one command (<= 8 minutes on one host).

Run on the accelerator host (docs/scaling.md, "A new accelerator"), it writes
accelerator_report.md and accelerator_report.json (``--out``) with one row per check:

  * kernel: every Pallas path compiled for the real device and compared with the XLA path on
    the same inputs (decode attention over a [64, 8, 784, 32] cache with ragged filled lengths;
    flash attention forward and gradient at T = 784 causal and 785 bidirectional): max |error|
    against the tolerance of the dtype;
  * decode: raster sampling of 784 tokens at batch 64 (MNIST-sized transformer, random
    weights), KV cache with the XLA decode attention vs the Pallas kernel, interleaved;
  * train: the MNIST-scale raster AR train step (bf16, batch 64) with XLA attention vs flash
    attention: ms per step and XLA's memory analysis of each compiled step (a step that does
    not fit the device is reported as such, not raised);
  * sample: DDIM-50 of the paper-scale UNet at batch 256, images/s.
Each kernel row ends in a verdict: a Pallas path should become the default on this platform
only where it is correct *and* faster here.

With ``--quick`` or on a CPU it runs reduced: small sizes, and the kernels through Pallas's
interpreter (the TPU and the GPU kernel both), so the correctness rows still check them against
XLA; the timings of a reduced run say nothing about an accelerator.
"""

from __future__ import annotations

TITLE = "Accelerator acceptance: kernels against XLA, decode, train step, sampling"
NOTE = ("max err: against the XLA path on the same inputs. Timings interleaved (medians), "
        "ratios from the same run. Reduced runs (CPU / --quick) interpret the kernels: their "
        "times say nothing about an accelerator.")

TOLERANCE = {"float32": 2e-4, "bfloat16": 3e-2}


def _sizes(reduced: bool) -> dict:
  if reduced:
    return dict(batch=4, heads=2, seq=48, dim=8, width=32, depth=1, levels=17, train_batch=4,
                side=4, unet=dict(base_channels=8, channel_mult=(1,), num_res_blocks=1),
                ddim_batch=4, ddim_steps=5)
  return dict(batch=64, heads=8, seq=784, dim=32, width=256, depth=8, levels=256,
              train_batch=64, side=28, unet=dict(base_channels=64, channel_mult=(1, 2),
                                                 num_res_blocks=2), ddim_batch=256, ddim_steps=50)


def _max_err(a, b) -> float:
  import jax
  import numpy as np

  leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
  return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
             for x, y in leaves)


def kernel_rows(reduced: bool, dtype: str) -> list[dict]:
  import functools

  import jax
  import jax.numpy as jnp

  from ardiff.kernels.attention import attention
  from ardiff.kernels.decode_attention import cache_length, decode_attention

  s = _sizes(reduced)
  on_cpu = jax.default_backend() == "cpu"
  decode_impls = ("pallas-tpu-interpret", "pallas-gpu-interpret") if on_cpu else ("pallas",)
  flash_impls = ("flash-tpu-interpret", "flash-gpu-interpret") if on_cpu else ("flash",)
  keys = jax.random.split(jax.random.key(0), 8)
  dt = jnp.dtype(dtype)
  rows = []

  b, n, c, h = s["batch"], s["heads"], cache_length(s["seq"]), s["dim"]
  q = jax.random.normal(keys[0], (b, n, h), dt)
  k, v = (jax.random.normal(kk, (b, n, c, h), dt) for kk in keys[1:3])
  filled = jax.random.randint(keys[3], (b,), 1, s["seq"] + 1)
  want = jax.jit(functools.partial(decode_attention, impl="xla"))(q, k, v, filled)
  for impl in decode_impls:
    got = jax.jit(functools.partial(decode_attention, impl=impl))(q, k, v, filled)
    rows.append(_check_row(f"decode attention [{b}, {n}, {c}, {h}]", impl, dtype,
                           _max_err(got, want)))

  length = 40 if reduced else s["seq"]
  for causal, extra in ((True, 0), (False, 1)):
    t = length + extra
    x = [jax.random.normal(kk, (2 if reduced else 8, t, n, h), dt) for kk in keys[4:7]]

    def value_and_grad(impl, *qkv):
      fn = lambda *a: attention(*a, causal=causal, impl=impl).astype(jnp.float32).sum()
      return jax.value_and_grad(fn, argnums=(0, 1, 2))(*qkv)

    want = jax.jit(functools.partial(value_and_grad, "xla"))(*x)
    for impl in flash_impls:
      got = jax.jit(functools.partial(value_and_grad, impl))(*x)
      # The summed value grows with T·N·H: compare it relative, the gradients absolute.
      err = max(_max_err(got[1], want[1]), abs(float(got[0] - want[0])) / (1 + abs(float(want[0]))))
      rows.append(_check_row(f"flash attention + grad, T={t}, {'causal' if causal else 'full'}",
                             impl, dtype, err))
  return rows


def _check_row(what: str, impl: str, dtype: str, err: float) -> dict:
  ok = err <= TOLERANCE[dtype]
  return {"check": what, "impl": impl, "dtype": dtype, "max err": err,
          "tolerance": TOLERANCE[dtype], "verdict": "correct" if ok else "WRONG"}


def decode_rows(reduced: bool) -> list[dict]:
  import jax
  import jax.numpy as jnp

  from ardiff import build
  from ardiff.bench import REPEATS
  from ardiff.bench.timer import interleaved
  from ardiff.presets import transformer_section
  from ardiff.data.base import DataSpec
  from ardiff.processes.autoregressive import decode

  s = _sizes(reduced)
  seq = s["side"] ** 2
  spec = DataSpec("tokens", "image", (s["side"], s["side"], 1), 10, s["levels"])
  process = build.build("raster", transformer_section(width=s["width"], depth=s["depth"],
                                                      heads=s["heads"]), spec)
  key = jax.random.key(0)
  y = jnp.arange(s["batch"], dtype=jnp.int32) % 10
  params = process.init_params(key, {"x": jnp.zeros((1, seq), jnp.int32), "y": y[:1]})
  impl = "pallas" if jax.default_backend() != "cpu" else "pallas-gpu-interpret"
  models = {"xla": process.model, impl: process.model.clone(decode_attention=impl)}
  t = interleaved({name: (lambda m=m: decode.raster_sample(m, params, key, y))
                   for name, m in models.items()}, REPEATS)
  return [{"check": f"raster decode, L={seq}, batch {s['batch']}", "impl": name,
           "ms": t[name].ms(), "speedup vs xla": t["xla"].median / t[name].median}
          for name in models]


def train_rows(reduced: bool, dtype: str) -> list[dict]:
  import jax
  import numpy as np

  from ardiff import build
  from ardiff.bench import REPEATS
  from ardiff.bench.memory import GIB
  from ardiff.bench.timer import interleaved
  from ardiff.bench.train import train_case
  from ardiff.presets import transformer_section
  from ardiff.data.base import DataSpec
  from ardiff.data.levels import to_tokens

  s = _sizes(reduced)
  spec = DataSpec("mnist-like", "image", (s["side"], s["side"], 1), 10, s["levels"])
  rng = np.random.default_rng(0)
  levels = rng.integers(0, s["levels"], (s["train_batch"], s["side"], s["side"], 1))
  tokens, y = to_tokens(levels.astype(np.uint8)), rng.integers(0, 10, s["train_batch"])
  impls = ("xla", "chunked" if jax.default_backend() == "cpu" else "flash")
  cases, rows = {}, []
  for impl in impls:
    section = transformer_section(width=s["width"], depth=s["depth"], heads=s["heads"],
                                  attention=impl)
    name = f"raster train step, {impl}"
    try:
      cases[name] = train_case(name, build.build("raster", section, spec, dtype), tokens,
                               y.astype(np.int32), s["train_batch"], 1)
    except Exception as e:  # noqa: BLE001 - a step that does not fit is a result here
      rows.append({"check": name, "impl": impl, "dtype": dtype, "ms": "did not compile",
                   "note": str(e).splitlines()[0][:120]})
  timings = interleaved({n: c.fn for n, c in cases.items()}, REPEATS) if cases else {}
  for name, case in cases.items():
    rows.append({"check": name, "impl": name.rsplit(", ", 1)[1], "dtype": dtype,
                 "ms": timings[name].ms(),
                 "GiB": case.memory["total"] / GIB if case.memory else None})
  return rows


def sample_rows(reduced: bool) -> list[dict]:
  import jax
  import jax.numpy as jnp

  from ardiff import build
  from ardiff.bench import REPEATS
  from ardiff.bench.timer import interleaved
  from ardiff.presets import diffusion_section, unet_section
  from ardiff.data.base import DataSpec

  s = _sizes(reduced)
  spec = DataSpec("digits", "image", (8, 8, 1), 10, 17)
  process = build.build("gaussian", unet_section(**s["unet"]), spec,
                        diffusion=diffusion_section(clip_x0=1.0))
  key = jax.random.key(0)
  y = jnp.arange(s["ddim_batch"], dtype=jnp.int32) % 10
  params = process.init_params(key, {"x": jnp.zeros((1, 8, 8, 1)), "y": y[:1]})
  spec_name = f"ddim:{s['ddim_steps']}"
  t = interleaved({spec_name: lambda: process.sample(params, key, y, spec_name)}, REPEATS)
  return [{"check": f"UNet {spec_name}, batch {s['ddim_batch']}", "impl": "xla",
           "ms": t[spec_name].ms(), "images/s": s["ddim_batch"] / t[spec_name].median}]


def rows(quick: bool = False) -> list[dict]:
  import jax

  reduced = quick or jax.default_backend() == "cpu"
  dtypes = ("float32",) if reduced else ("float32", "bfloat16")
  out = [row for dtype in dtypes for row in kernel_rows(reduced, dtype)]
  out += decode_rows(reduced)
  out += train_rows(reduced, dtypes[-1])
  return out + sample_rows(reduced)
