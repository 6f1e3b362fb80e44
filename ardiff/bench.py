"""`ardiff bench <what>`: speed tables measured in one run (never timed tests).

Every timing excludes compilation (one warm-up call first) and blocks on the result; the
reported number is the median of `repeats` calls.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from ardiff.report import markdown_table


def time_call(fn: Callable[[], object], repeats: int = 3) -> float:
  """Median wall seconds of fn() after one warm-up call (which includes compilation)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def device_description() -> str:
  d = jax.devices()[0]
  return f"{jax.device_count()} x {d.device_kind} ({d.platform}), jax {jax.__version__}"


def bench_samplers(quick: bool = False) -> list[dict]:
  """DDPM/DDIM with the spiral MLP: lax.scan loop vs the same step called from Python."""
  from ardiff.diffusion.process import GaussianDiffusion
  from ardiff.diffusion.samplers import sample, sample_python_loop
  from ardiff.models.mlp import MLPDenoiser

  process = GaussianDiffusion(MLPDenoiser(3, width=192, depth=4), 3, clip_x0=1.5)
  params = process.init_params(jax.random.key(0), {"x": jnp.zeros((1, 2)),
                                                   "y": jnp.zeros((1,), jnp.int32)})
  rows = []
  # Small batches show the per-step dispatch cost the scan removes; large ones are compute-bound.
  settings = [(64, "ddim", 10), (64, "ddim", 50)] if quick else [
      (b, s, n) for b in (64, 2000) for s, n in (("ddim", 10), ("ddim", 50), ("ddpm", 1000))]
  for batch, sampler, steps in settings:
    x_init = jax.random.normal(jax.random.key(1), (batch, 2))
    y = jnp.full((batch,), process.null_label, jnp.int32)
    args = (process.eps_fn, params, process.schedule, x_init, jax.random.key(2), y)
    kw = dict(sampler=sampler, num_steps=steps)
    t_scan = time_call(lambda: sample(*args, **kw))
    t_loop = time_call(lambda: sample_python_loop(*args, **kw), repeats=1 if steps >= 250 else 3)
    rows.append({"sampler": sampler.upper(), "NFE": steps, "batch": batch,
                 "scan samples/s": batch / t_scan, "python-loop samples/s": batch / t_loop,
                 "scan / loop": t_loop / t_scan})
  return rows


BENCHMARKS: dict[str, tuple[str, Callable[[bool], list[dict]]]] = {
    "samplers": ("Diffusion sampling: lax.scan vs Python loop (spiral MLP)", bench_samplers),
}


def _register_optional():
  """Benchmarks whose modules belong to other parts of the library."""
  try:
    from ardiff.bench_ar import bench_kv_cache

    BENCHMARKS["ar"] = ("Autoregressive sampling: KV cache vs recompute", bench_kv_cache_rows)
  except ImportError:
    pass


def bench_kv_cache_rows(quick: bool = False) -> list[dict]:
  from ardiff.bench_ar import bench_kv_cache

  return bench_kv_cache(seq_lens=(64,) if quick else (64, 784))


def run(what: str, quick: bool = False, out: str | None = None) -> str:
  _register_optional()
  names = list(BENCHMARKS) if what == "all" else [what]
  text = [f"Device: {device_description()}\n"]
  for name in names:
    if name not in BENCHMARKS:
      raise SystemExit(f"ardiff bench: {name!r} is not available; choose from {sorted(BENCHMARKS)}")
    title, fn = BENCHMARKS[name]
    print(f"running bench {name} ...", file=sys.stderr, flush=True)
    text.append(f"## {title}\n\n{markdown_table(fn(quick))}")
  result = "\n".join(text)
  print(result)
  if out:
    with open(out, "w") as f:
      f.write(result)
  return result
