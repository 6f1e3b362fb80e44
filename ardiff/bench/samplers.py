"""Diffusion sampling with the spiral MLP: one jitted lax.scan over the steps (A) against the
same jitted step called from a Python loop (B), interleaved."""

from __future__ import annotations

TITLE = "Diffusion sampling: lax.scan vs Python loop (spiral MLP)"
NOTE = ("loop / scan = median Python-loop time / median scan time (> 1: the scan is faster). "
        "Small batches show the per-step dispatch cost the scan removes; large ones are "
        "compute-bound.")


def rows(quick: bool = False) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import ml_collections

  from ardiff import build
  from ardiff.bench import REPEATS
  from ardiff.bench.timer import interleaved, ratio
  from ardiff.presets import diffusion_section
  from ardiff.data.base import DataSpec
  from ardiff.processes.gaussian.samplers import sample, sample_python_loop

  spiral = DataSpec("spiral", "points", (2,), num_classes=3)
  process = build.build("gaussian", ml_collections.ConfigDict(dict(width=192, depth=4)), spiral,
                        diffusion=diffusion_section(clip_x0=1.5))
  params = process.init_params(jax.random.key(0), {"x": jnp.zeros((1, 2)),
                                                   "y": jnp.zeros((1,), jnp.int32)})
  settings = [(64, "ddim", 10), (64, "ddim", 50)] if quick else [
      (b, s, n) for b in (64, 2000) for s, n in (("ddim", 10), ("ddim", 50), ("ddpm", 1000))]
  out = []
  for batch, sampler, steps in settings:
    x_init = jax.random.normal(jax.random.key(1), (batch, 2))
    y = jnp.full((batch,), process.num_classes, jnp.int32)  # the null label: unconditional
    args = (process.eps_fn, params, process.schedule, x_init, jax.random.key(2), y)
    kw = dict(sampler=sampler, num_steps=steps)
    t = interleaved({"scan": lambda: sample(*args, **kw),
                     "loop": lambda: sample_python_loop(*args, **kw)}, REPEATS)
    out.append({"sampler": sampler.upper(), "NFE": steps, "batch": batch,
                "scan ms": t["scan"].ms(), "python-loop ms": t["loop"].ms(),
                "scan samples/s": batch / t["scan"].median,
                "python-loop samples/s": batch / t["loop"].median,
                "loop / scan": ratio(t, "loop", "scan")})
  return out
