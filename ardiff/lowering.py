"""Lowering programs for accelerators from any host (a CPU one included), without running them.

    exported = lowering.export(jitted, *abstract_args)            # tpu and cuda by default
    lowering.custom_call_targets(exported)                        # e.g. {"tpu_custom_call"}

`jax.export` lowers a jitted function to StableHLO for the platforms asked for, whatever the
host has: one export for ("tpu", "cuda") runs each op's lowering rule for both platforms (ops
whose rules differ per platform become a `stablehlo.case` on a platform index), so a program
that does not lower for either fails here. That catches unsupported ops, sharding mistakes and
Pallas kernels the TPU or GPU lowering refuses; it does not compile (XLA:TPU, Mosaic and Triton
run only on a device). Arguments are `jax.ShapeDtypeStruct`s: nothing is allocated, so the
paper- and MNIST-scale programs lower on a laptop.

Programs the project runs on accelerators, built here from abstract inputs:
  - `train_step_programs`: the guarded train step as `ardiff.train` jits it (parameters
    replicated, batch sharded over the "data" axis), traced once and placed on meshes of any
    size: an `AbstractMesh` needs no devices (`abstract_data_mesh(8)`);
  - `sample_program`: `process.sample` for a spec (and guidance) with the parameters abstract.
Used by tests/test_lowering.py (every builder family and every registered sampler); the same
programs with a concrete mesh can be compiled on the CPU for XLA's memory analysis
(`fn.lower(*args).compile().memory_analysis()`), for the benchmarks.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from ardiff import parallel
from ardiff.kernels.platform import ACCELERATORS as PLATFORMS
from ardiff.kernels.platform import custom_call_targets, export_for, module_text


def export(fn: Callable, *args, platforms: Sequence[str] = PLATFORMS,
           pallas_tpu: bool = False) -> jax.export.Exported:
  """`fn` (jitted, or jitted here) lowered for `platforms` from abstract `args`
  (`kernels.platform.export_for`; `pallas_tpu` for programs with Pallas TPU kernels)."""
  return export_for(fn, args, platforms, pallas_tpu=pallas_tpu)


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of a pytree of arrays (or of ShapeDtypeStructs), with `sharding`."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def abstract_data_mesh(num_devices: int) -> AbstractMesh:
  """A data-parallel mesh of `num_devices` devices that need not exist (for lowering)."""
  return AbstractMesh((num_devices,), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,))


def abstract_batch(process, data_spec, batch_size: int, sharding=None) -> dict:
  """A training batch of `process` on data described by `data_spec` (a DataSpec): int32
  tokens [B, L] for the token processes (``process.inputs == "tokens"``), float32 inputs
  [B, *shape] otherwise."""
  if data_spec.kind == "image" and process.inputs == "tokens":
    x = jax.ShapeDtypeStruct((batch_size, data_spec.num_tokens), jnp.int32, sharding=sharding)
  else:
    x = jax.ShapeDtypeStruct((batch_size, *data_spec.shape), jnp.float32, sharding=sharding)
  return {"x": x, "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}


def _key_struct() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def train_step_programs(process, cfg, batch: dict, meshes: Sequence) -> list[tuple]:
  """[(jitted guarded train step, its abstract arguments)] on each mesh of `meshes`, as
  `ardiff.train` runs the step (TrainConfig `cfg`): state and divergence replicated, the batch
  sharded on the data axis, the state donated. `batch`: abstract arrays (`abstract_batch`);
  a mesh may be concrete or abstract (`abstract_data_mesh`). Nothing is initialised (the
  state's shapes come from `jax.eval_shape`), and the step is traced once: each mesh's program
  is that jaxpr with the mesh's shardings (the arguments are the flattened pytrees)."""
  from jax.extend.core import jaxpr_as_fun

  from ardiff.train import Divergence, guarded_train_step, init_state, make_optimizer

  tx = make_optimizer(cfg)
  step = functools.partial(guarded_train_step, process, tx, cfg.ema_decay,
                           ema_warmup=cfg.ema_warmup, grad_accum=cfg.grad_accum)
  state = jax.eval_shape(functools.partial(init_state, process, tx), batch, jax.random.key(0))
  args = (state, jax.eval_shape(Divergence.none), batch, _key_struct())
  closed = jax.jit(step).trace(*args).jaxpr
  counts = [len(jax.tree.leaves(a)) for a in args]
  programs = []
  for mesh in meshes:
    repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    shardings = [repl] * (counts[0] + counts[1]) + [data] * counts[2] + [repl] * counts[3]
    fn = jax.jit(jaxpr_as_fun(closed), in_shardings=shardings, out_shardings=repl,
                 donate_argnums=tuple(range(counts[0])))
    programs.append((fn, [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
                          for a, s in zip(jax.tree.leaves(args), shardings)]))
  return programs


def abstract_params(process, data_spec) -> Any:
  """The process's parameters as ShapeDtypeStructs (traced, never initialised)."""
  batch = abstract_batch(process, data_spec, 1)
  return jax.eval_shape(process.init_params, jax.random.key(0), batch)


# What a wrapper raises when it needs a concrete value of something traced.
_NEEDS_CONCRETE = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                   jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError)


def staged(fn: Callable) -> Callable:
  """`fn`, to be traced whole: for wrappers that prepare values on the host before calling
  their jitted core (`process.sample`, `inpaint`, ...). Everything is staged into the program
  (what such a wrapper runs eagerly runs on the accelerator too), unless the wrapper needs a
  concrete value (e.g. a diffusion time grid computed with numpy from the schedule): then it is
  traced again with the computations on concrete values done at trace time, as when it is
  called outside a trace, and only what depends on the traced arguments is staged."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except _NEEDS_CONCRETE:
      with jax.ensure_compile_time_eval():
        return fn(*args, **kwargs)

  return wrapper


def sample_program(process, spec: str, labels, *, guidance=None) -> Callable:
  """params -> `process.sample(params, key, labels, spec, guidance=guidance)` for the fixed
  (concrete) `labels` [B] and a fixed key: export it with `abstract_params`."""
  labels = np.asarray(labels, np.int32)

  @staged
  def sample(params):
    return process.sample(params, jax.random.key(0), labels, spec, guidance=guidance)

  return jax.jit(sample)


__all__ = ["PLATFORMS", "abstract", "abstract_batch", "abstract_data_mesh", "abstract_params",
           "custom_call_targets", "export", "module_text", "sample_program", "staged",
           "train_step_programs"]
