"""Training throughput at MNIST size (28x28 = 784 tokens / pixels, random data): raster AR,
order-agnostic AR and a UNet, all timed interleaved in one run, with model FLOPs per step from
XLA's cost analysis and, on a known accelerator, the fraction of its peak.

`TrainCase` / `train_row` are shared with the diffusion bench.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

TITLE = "Training throughput at MNIST size (random data)"
NOTE = ("One call = `steps/call` train steps (ardiff.train.train_step, compiled ahead of time) "
        "from the same state; ms are per step. bfloat16 rows only on accelerators.")

# Peak dense bf16 throughput (FLOP/s) of accelerators we know, for the fraction-of-peak column.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops() -> tuple[float | None, str]:
  """(peak FLOP/s of all devices, a description), or (None, why not)."""
  import jax

  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak * jax.device_count(), f"{name} bf16 dense {peak / 1e12:.0f} TFLOP/s per chip"
  return None, "no known peak for this device"


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
  """The compiled train step for one batch of (x, y), ready to time."""
  from ardiff.train import num_params

  step = compile_train_step(process, x, y, batch)

  def run_steps():
    for _ in range(steps):
      _, metrics = step.compiled(step.state, step.arrays, step.key)
    return metrics["loss"]

  return TrainCase(name, num_params(step.state.params), batch, steps,
                   compiled_flops(step.compiled), run_steps, compiled_memory(step.compiled))


def time_cases(cases: list[TrainCase]) -> dict:
  from ardiff.bench import REPEATS
  from ardiff.bench.timer import interleaved

  return interleaved({c.name: c.fn for c in cases}, REPEATS)


def train_row(case: TrainCase, timing, examples: str = "examples/s") -> dict:
  seconds = timing.median / case.steps
  row = {"model": case.name, "params": case.params, "batch": case.batch,
         "steps/call": case.steps, "ms/step": timing.ms(1.0 / case.steps),
         "steps/s": 1.0 / seconds, examples: case.batch / seconds}
  if case.flops:
    peak, _ = peak_flops()
    row["GFLOP/step"] = case.flops / 1e9
    row["TFLOP/s"] = case.flops / seconds / 1e12
    if peak:
      row["fraction of peak"] = case.flops / seconds / peak
  return row


def rows(quick: bool = False) -> list[dict]:
  import numpy as np

  from ardiff import build
  from ardiff.bench import on_cpu
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
  timings = time_cases(cases)
  return [train_row(c, timings[c.name]) for c in cases]
