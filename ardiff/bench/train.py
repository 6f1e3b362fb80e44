"""Training throughput at MNIST size (28x28 = 784 tokens / pixels, random data: raster AR,
order-agnostic AR and a UNet) and at docs/results.md's digits configs (`image_config("small")`: the
raster AR transformer of digits_ar and the UNet of digits_diffusion, their batch and dtype, on
the digits data), all timed interleaved in one run, with model FLOPs per step from XLA's cost
analysis and the fraction of peak: a known accelerator's listed peak, or on any other device
(a CPU) the peak measured in the same run, a jitted float32 `jnp.dot` of two
PEAK_SIZE x PEAK_SIZE matrices (2 n^3 FLOPs) timed through the same interleaved timer (the
`peak` row, last). On a loaded, shared CPU that measured peak moves with the load (62-114
GFLOP/s at load 5-9 on the 2-core CPU of these sessions, ~215 quiet), and so do the train
steps: read the fraction, which comes from one run.

`TrainCase` / `train_row` are shared with the diffusion bench.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

TITLE = "Training throughput at MNIST size (random data)"
NOTE = ("One call = `steps/call` train steps (ardiff.train.train_step, compiled ahead of time) "
        "from the same state; ms are per step. bfloat16 rows only on accelerators. `fraction "
        "of peak` = TFLOP/s / the peak: a known accelerator's, else the `peak` row's, measured "
        "in this run.")
PEAK_SIZE = 2048  # the measured peak's matrices: large enough for the GEMM to reach its peak
PEAK_ROW = f"peak: jitted float32 jnp.dot {PEAK_SIZE}x{PEAK_SIZE}"

# Peak dense bf16 throughput (FLOP/s) of accelerators we know, for the fraction-of-peak column.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops() -> tuple[float | None, str]:
  """(peak FLOP/s of all devices, a description), or (None, what `bench train` uses instead)."""
  import jax

  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak * jax.device_count(), f"{name} bf16 dense {peak / 1e12:.0f} TFLOP/s per chip"
  return None, (f"no known peak for this device; bench train measures one in its run "
                f"(`{PEAK_ROW}`)")


def peak_case() -> tuple[Callable[[], Any], float]:
  """(a zero-argument call of a jitted float32 jnp.dot of two PEAK_SIZE^2 matrices, its
  FLOPs): timed beside the train steps, it gives the peak where no listed one applies."""
  import jax
  import jax.numpy as jnp

  n = PEAK_SIZE
  a, b = (jax.random.normal(k, (n, n), jnp.float32) for k in jax.random.split(jax.random.key(0)))
  dot = jax.jit(jnp.dot).lower(a, b).compile()
  return (lambda: dot(a, b)), 2.0 * n ** 3


def peak_row(timing, flops: float) -> dict:
  """The measured peak as a row of the table (its fraction of itself is 1)."""
  rate = flops / timing.median
  return {"model": PEAK_ROW, "ms/step": timing.ms(), "GFLOP/step": flops / 1e9,
          "TFLOP/s": rate / 1e12, "fraction of peak": 1.0}


def compiled_flops(compiled) -> float | None:
  """FLOPs of a compiled program from XLA's cost analysis (None if the backend gives none)."""
  from ardiff.train import step_flops  # the one reader of XLA's cost analysis

  return step_flops(compiled)


def compiled_memory(compiled) -> dict | None:
  """Bytes of a compiled program per device from XLA's memory analysis: `fixed` (arguments +
  outputs - aliased), `temp` (temporaries) and their `total`; None if the backend gives none."""
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  fixed = (stats.argument_size_in_bytes + stats.output_size_in_bytes
           - stats.alias_size_in_bytes)
  return {"fixed": fixed, "temp": stats.temp_size_in_bytes,
          "total": fixed + stats.temp_size_in_bytes}


@dataclasses.dataclass(frozen=True)
class TrainCase:
  """One model's train step, ready to time: `fn` runs `steps` steps and returns the last loss."""

  name: str
  params: int
  batch: int
  steps: int
  flops: float | None  # per step
  fn: Callable[[], Any]
  memory: dict | None = None  # compiled_memory of the step


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A train step compiled ahead of time for one batch, with what it is called on."""

  compiled: Any
  state: Any
  arrays: Any
  key: Any


def compile_train_step(process, x, y, batch: int) -> CompiledStep:
  """Compile the real train step (ardiff.train.train_step) for one batch of (x, y)."""
  import functools

  import jax

  from ardiff import parallel
  from ardiff.train import TrainConfig, init_state, make_optimizer, train_step

  mesh = parallel.data_mesh()
  tx = make_optimizer(TrainConfig(steps=1000, batch_size=batch))
  arrays = parallel.put_global_batch({"x": x[:batch], "y": y[:batch]}, mesh)
  state = init_state(process, tx, arrays, jax.random.key(0))
  key = jax.random.key(1)
  # Compiled once, ahead of time: the same executable gives the FLOPs, the memory and the runs.
  step = jax.jit(functools.partial(train_step, process, tx, 0.999)).lower(
      state, arrays, key).compile()
  return CompiledStep(step, state, arrays, key)


def train_case(name: str, process, x, y, batch: int, steps: int) -> TrainCase:
  """The compiled train step for one batch of (x, y), ready to time. Its FLOPs are XLA's count
  of the step as training budgets count it (`train_step_flops`: lowered with JAX's own CPU
  random-bit lowering, see ardiff/threefry_cpu.py), not of the straight-line program timed."""
  from ardiff.train import TrainConfig, num_params, train_step_flops

  step = compile_train_step(process, x, y, batch)
  flops = train_step_flops(process, x, y, TrainConfig(steps=1000, batch_size=batch))

  def run_steps():
    for _ in range(steps):
      _, metrics = step.compiled(step.state, step.arrays, step.key)
    return metrics["loss"]

  return TrainCase(name, num_params(step.state.params), batch, steps,
                   flops, run_steps, compiled_memory(step.compiled))


def train_row(case: TrainCase, timing, examples: str = "examples/s",
              peak: float | None = None) -> dict:
  """One case's row; `peak` (FLOP/s): the one measured in the run, else a listed one."""
  seconds = timing.median / case.steps
  row = {"model": case.name, "params": case.params, "batch": case.batch,
         "steps/call": case.steps, "ms/step": timing.ms(1.0 / case.steps),
         "steps/s": 1.0 / seconds, examples: case.batch / seconds}
  if case.flops:
    peak = peak or peak_flops()[0]
    row["GFLOP/step"] = case.flops / 1e9
    row["TFLOP/s"] = case.flops / seconds / 1e12
    if peak:
      row["fraction of peak"] = case.flops / seconds / peak
  return row


def digits_cases(quick: bool) -> list[TrainCase]:
  """docs/results.md's digits configs (`image_config("small")`, what digits_ar and
  digits_diffusion train): the raster AR transformer and the UNet, their batch and dtype, on
  the digits data. quick: the experiments' smoke sizes at batch 8 (for the tests)."""
  from ardiff import build
  from ardiff.data import load_dataset
  from ardiff.data.levels import levels_to_unit, to_tokens
  from ardiff.presets import image_config

  c = image_config("small", ar=True, diffusion=True)
  batch, steps = (8, 2) if quick else (c.train.batch_size, 10)
  if quick:
    c.ar.update(width=32, depth=1)
    c.unet.update(base_channels=8, channel_mult=(1,))
  data = load_dataset("digits")
  raster = build.build("raster", c.ar, data, c.dtype)
  unet = build.build("gaussian", c.unet, data, c.dtype, diffusion=c.diffusion)
  return [train_case(f"digits raster AR (digits_ar: width {c.ar.width}, depth {c.ar.depth}, "
                     f"64 tokens, {c.dtype})", raster, to_tokens(data.x_train), data.y_train,
                     batch, steps),
          train_case(f"digits UNet (digits_diffusion: base {c.unet.base_channels}, 8x8, "
                     f"{c.dtype})", unet, levels_to_unit(data.x_train, data.num_levels),
                     data.y_train, batch, steps)]


def rows(quick: bool = False) -> list[dict]:
  import numpy as np

  from ardiff import build
  from ardiff.bench import REPEATS, on_cpu
  from ardiff.bench.timer import interleaved
  from ardiff.presets import diffusion_section, transformer_section, unet_section
  from ardiff.data.base import DataSpec
  from ardiff.data.levels import levels_to_unit, to_tokens

  rng = np.random.default_rng(0)
  side = 8 if quick else 28
  levels = rng.integers(0, 256, (64, side, side, 1)).astype(np.uint8)
  y = rng.integers(0, 10, 64).astype(np.int32)
  data = DataSpec("mnist-like", "image", (side, side, 1), num_classes=10, num_levels=256)
  batch, steps = (8, 2) if quick else (32, 3)
  width, depth = (32, 1) if quick else (128, 4)
  # bfloat16 rows on accelerators only: XLA:CPU emulates bf16 matmuls, so there it only slows.
  dtypes = ("float32",) if on_cpu() else ("float32", "bfloat16")
  tokens, unit = to_tokens(levels), levels_to_unit(levels, 256)
  cases = []
  for dtype in dtypes:
    for kind in ("raster", "ardm"):
      process = build.build(kind, transformer_section(width=width, depth=depth), data, dtype)
      cases.append(train_case(f"transformer {kind} ({side * side} tokens, {dtype})", process,
                              tokens, y, batch, steps))
    process = build.build("gaussian", unet_section(base_channels=8 if quick else 32), data,
                          dtype, diffusion=diffusion_section())
    cases.append(train_case(f"UNet ({side}x{side}, {dtype})", process, unit, y, batch, steps))
  cases += digits_cases(quick)
  fns = {c.name: c.fn for c in cases}
  listed, _ = peak_flops()
  if listed is None:  # timed among the steps, so a slow spell of the machine hits both alike
    fns[PEAK_ROW], peak_work = peak_case()
  timings = interleaved(fns, REPEATS)
  if listed:
    return [train_row(c, timings[c.name]) for c in cases]
  measured = peak_work / timings[PEAK_ROW].median
  # The peak row last, so that the table's columns come in the train rows' order.
  return [train_row(c, timings[c.name], peak=measured) for c in cases] + [
      peak_row(timings[PEAK_ROW], peak_work)]
