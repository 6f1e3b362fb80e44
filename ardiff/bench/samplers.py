"""Diffusion sampling with the spiral MLP: one jitted loop over the steps (A) against the same
jitted step called from a Python loop (B), interleaved; the padded loop (the step count as
data) against the static scan (one program per step count); and the programs a sweep over
step counts compiles with each."""

from __future__ import annotations

import time

TITLE = "Diffusion sampling: lax.scan vs Python loop (spiral MLP)"
NOTE = ("loop / scan = median Python-loop time / median padded-loop time (> 1: the compiled "
        "loop is faster). static = the scan over the exact grid, one program per step count; "
        "static / padded near 1 means the step count as data costs nothing at run time. Small "
        "batches show the per-step dispatch cost the compiled loop removes; large ones are "
        "compute-bound.")
COMPILE_TITLE = "Programs compiled by a sweep over step counts (spiral MLP, batch 64)"
COMPILE_NOTE = ("Each sweep starts from cleared JAX caches and runs every step count once. "
                "before = the static scan over the exact time grid (the loop before the step "
                "count became data: one `_sample` program per step count; its host-side grid "
                "is computed as after's, whose eager ops no longer compile per step count, so "
                "the code before this change compiled more); after = the grid "
                "padded to 1024 times with the count as a traced int32 (one program per "
                "solver). programs = every XLA program the sweep compiled (the sampler and the "
                "eager ops around it), compile s = their backend compile seconds, sweep s = the "
                "sweep's wall time. A persistent compilation cache (on under `ardiff bench` "
                "unless ARDIFF_COMPILATION_CACHE=off) turns compiles into loads: cache hits says "
                "how many.")
SOLVERS = ("ddim", "ddpm", "heun", "dpmpp_2m")
STEP_COUNTS = (8, 16, 32, 64, 128, 256, 512, 1000)


def _spiral():
  import jax
  import jax.numpy as jnp
  import ml_collections

  from ardiff import build
  from ardiff.data.base import DataSpec
  from ardiff.presets import diffusion_section

  spiral = DataSpec("spiral", "points", (2,), num_classes=3)
  process = build.build("gaussian", ml_collections.ConfigDict(dict(width=192, depth=4)), spiral,
                        diffusion=diffusion_section(clip_x0=1.5))
  params = process.init_params(jax.random.key(0), {"x": jnp.zeros((1, 2)),
                                                   "y": jnp.zeros((1,), jnp.int32)})
  return process, params


def _inputs(process, params, batch):
  import jax
  import jax.numpy as jnp

  x_init = jax.random.normal(jax.random.key(1), (batch, 2))
  y = jnp.full((batch,), process.num_classes, jnp.int32)  # the null label: unconditional
  return (process.eps_fn, params, process.schedule, x_init, jax.random.key(2), y)


def rows(quick: bool = False) -> list[dict]:
  from ardiff.bench import REPEATS
  from ardiff.bench.timer import interleaved, ratio
  from ardiff.processes.gaussian.samplers import sample, sample_python_loop

  process, params = _spiral()
  settings = [(64, "ddim", 10), (64, "ddim", 50)] if quick else [
      (b, s, n) for b in (64, 2000) for s, n in (("ddim", 10), ("ddim", 50), ("ddpm", 1000))]
  out = []
  for batch, sampler, steps in settings:
    args = _inputs(process, params, batch)
    kw = dict(sampler=sampler, num_steps=steps)
    t = interleaved({"scan": lambda: sample(*args, **kw),
                     "static": lambda: sample(*args, **kw, pad=False),
                     "loop": lambda: sample_python_loop(*args, **kw)}, REPEATS)
    out.append({"sampler": sampler.upper(), "NFE": steps, "batch": batch,
                "scan ms": t["scan"].ms(), "static scan ms": t["static"].ms(),
                "python-loop ms": t["loop"].ms(),
                "scan samples/s": batch / t["scan"].median,
                "python-loop samples/s": batch / t["loop"].median,
                "loop / scan": ratio(t, "loop", "scan"),
                "static / padded": ratio(t, "static", "scan")})
  return out


def _sweep(args, solvers, counts, pad: bool) -> list[dict]:
  """One row per solver: the programs its sweep over `counts` compiled, from cold caches."""
  import jax

  from ardiff.bench.compiles import compile_log
  from ardiff.processes.gaussian.samplers import sample

  out = []
  for solver in solvers:
    jax.clear_caches()
    start = time.perf_counter()
    with compile_log() as log:
      for n in counts:
        jax.block_until_ready(sample(*args, sampler=solver, num_steps=n, pad=pad))
    wall = time.perf_counter() - start
    out.append({"solver": solver, "loop": "after (padded)" if pad else "before (static)",
                "step counts": len(counts), "_sample programs": log.count("_sample"),
                "programs": log.count(), "compile s": round(log.seconds, 2),
                "sweep s": round(wall, 2), "compile share": f"{log.seconds / wall:.0%}",
                "cache hits": log.cache_hits})
  return out


def compile_rows(quick: bool = False) -> list[dict]:
  """The sweep of STEP_COUNTS x SOLVERS, before (static) and after (padded), and totals."""
  process, params = _spiral()
  args = _inputs(process, params, 64)
  solvers = SOLVERS[:2] if quick else SOLVERS
  counts = STEP_COUNTS[:4] if quick else STEP_COUNTS
  out = []
  for pad in (False, True):
    rows_ = _sweep(args, solvers, counts, pad)
    total = {k: sum(r[k] for r in rows_) for k in ("_sample programs", "programs", "cache hits")}
    compile_s = sum(r["compile s"] for r in rows_)
    wall = sum(r["sweep s"] for r in rows_)
    out += rows_ + [{"solver": "all", "loop": rows_[0]["loop"], "step counts": len(counts),
                     **total, "compile s": round(compile_s, 2), "sweep s": round(wall, 2),
                     "compile share": f"{compile_s / wall:.0%}"}]
  return out


def extra_tables(quick: bool = False) -> list[tuple[str, str, list[dict]]]:
  """Further tables printed after the main one: (title, note, rows)."""
  return [(COMPILE_TITLE, COMPILE_NOTE, compile_rows(quick))]
