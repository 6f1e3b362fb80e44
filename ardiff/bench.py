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


# Peak dense bf16 throughput (FLOP/s) of accelerators we know, for the fraction-of-peak column.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def _peak_flops() -> tuple[float | None, str]:
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak * jax.device_count(), f"{name} bf16 dense {peak / 1e12:.0f} TFLOP/s per chip"
  return None, "no known peak for this device"


def _flops(compiled) -> float | None:
  """FLOPs of a compiled program from XLA's cost analysis (None if the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0)) or None
  except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
    return None


def _bench_training(name: str, process, x, y, batch: int, steps: int) -> dict:
  """Steps/s of the real train step (ardiff.train.train_step) on one batch, and model FLOPs."""
  import functools

  from ardiff import parallel
  from ardiff.train import TrainConfig, init_state, make_optimizer, num_params, train_step

  mesh = parallel.data_mesh()
  tx = make_optimizer(TrainConfig(steps=1000, batch_size=batch))
  batch_arrays = parallel.put_global_batch({"x": x[:batch], "y": y[:batch]}, mesh)
  state = init_state(process, tx, batch_arrays, jax.random.key(0))
  key = jax.random.key(1)
  # Compile once, ahead of time: the same executable gives the FLOPs and runs the steps.
  step = jax.jit(functools.partial(train_step, process, tx, 0.999)).lower(
      state, batch_arrays, key).compile()
  flops = _flops(step)

  def run_steps():
    s = state
    for _ in range(steps):
      s, metrics = step(s, batch_arrays, key)
    return metrics["loss"]

  seconds = time_call(run_steps, repeats=1) / steps
  peak, _ = _peak_flops()
  row = {"model": name, "params": num_params(state.params), "batch": batch,
         "steps/s": 1.0 / seconds, "examples/s": batch / seconds}
  if flops:
    row["GFLOP/step"] = flops / 1e9
    row["TFLOP/s"] = flops / seconds / 1e12
    if peak:
      row["fraction of peak"] = flops / seconds / peak
  return row


def bench_diffusion(quick: bool = False) -> list[dict]:
  """UNet training steps/s and DDIM sampling images/s on digits (8x8), batch 256."""
  from ardiff import zoo
  from ardiff.data import load_dataset
  from ardiff.data.base import levels_to_unit
  from ardiff.diffusion.config import diffusion_section

  data = load_dataset("digits")
  unet = zoo.unet_section(base_channels=8) if quick else zoo.unet_section()
  process = zoo.image_diffusion(unet, diffusion_section(), data)
  batch = 64 if quick else 256
  x = levels_to_unit(data.x_train, data.num_levels)
  row = _bench_training("UNet (digits 8x8)", process, x, data.y_train, batch, 3 if quick else 10)
  params = process.init_params(jax.random.key(0), {"x": jnp.asarray(x[:1]),
                                                   "y": jnp.asarray(data.y_train[:1])})
  rows = [row]
  for steps in ((2,) if quick else (10, 50)):
    t = time_call(lambda: process.sample(params, jax.random.key(0), batch, data.shape,
                                         sampler="ddim", num_steps=steps), repeats=2)
    rows.append({"model": f"UNet DDIM {steps} steps (sampling)", "batch": batch,
                 "images/s": batch / t})
  return rows


def bench_train(quick: bool = False) -> list[dict]:
  """Training throughput at MNIST size (28x28 = 784 tokens / pixels), random data."""
  import numpy as np

  from ardiff import zoo
  from ardiff.data.base import Dataset
  from ardiff.diffusion.config import diffusion_section

  rng = np.random.default_rng(0)
  side = 8 if quick else 28
  x = rng.integers(0, 256, (64, side, side, 1)).astype(np.uint8)
  y = rng.integers(0, 10, 64).astype(np.int32)
  data = Dataset("mnist-like", "image", x, y, x[:2], y[:2], num_classes=10, num_levels=256)
  batch, steps = (8, 2) if quick else (32, 3)
  width, depth = (32, 1) if quick else (128, 4)
  # bfloat16 rows on accelerators only: XLA:CPU emulates bf16 matmuls, so there it only slows.
  dtypes = ("float32",) if quick or jax.default_backend() == "cpu" else ("float32", "bfloat16")
  xs = (x.astype(np.float32) / 127.5 - 1.0)
  rows = []
  for dtype in dtypes:
    for kind in ("raster", "ardm"):
      process = (zoo.raster_ar if kind == "raster" else zoo.order_agnostic_ar)(
          zoo.transformer_section(width=width, depth=depth), data, dtype)
      rows.append(_bench_training(f"transformer {kind} ({side * side} tokens, {dtype})", process,
                                  zoo.tokens(x), y, batch, steps))
    process = zoo.image_diffusion(zoo.unet_section(base_channels=8 if quick else 32),
                                  diffusion_section(), data, dtype)
    rows.append(_bench_training(f"UNet ({side}x{side}, {dtype})", process, xs, y, batch, steps))
  return rows


BENCHMARKS: dict[str, tuple[str, Callable[[bool], list[dict]]]] = {
    "samplers": ("Diffusion sampling: lax.scan vs Python loop (spiral MLP)", bench_samplers),
    "diffusion": ("Image diffusion on digits: training and DDIM sampling", bench_diffusion),
    "train": ("Training throughput at MNIST size (random data)", bench_train),
}


def bench_kv_cache_rows(quick: bool = False) -> list[dict]:
  from ardiff.bench_ar import bench_kv_cache

  return bench_kv_cache(seq_lens=(64,) if quick else (64, 784))


BENCHMARKS["ar"] = ("Autoregressive sampling: KV cache vs recompute", bench_kv_cache_rows)


def run(what: str, quick: bool = False, out: str | None = None) -> str:
  names = list(BENCHMARKS) if what == "all" else [what]
  text = [f"Device: {device_description()}; peak used: {_peak_flops()[1]}\n"]
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
