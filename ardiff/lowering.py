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
  - `train_step_program`: the guarded train step as `ardiff.train` jits it (parameters
    replicated, batch sharded over the "data" axis), on a mesh of any size: an
    `AbstractMesh` needs no devices (`abstract_data_mesh(8)`);
  - `sample_program`: `process.sample` for a spec (and guidance) with the parameters abstract.
Used by tests/test_lowering.py (every builder family and every registered sampler) and by the
benchmarks.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from ardiff import parallel

PLATFORMS = ("tpu", "cuda")

# `stablehlo.custom_call @target(...)` in the generic or the pretty form of the module text.
_CUSTOM_CALL = re.compile(r'custom_call\s*@([\w$.\-]+)|call_target_name\s*=\s*"([^"]+)"')


def export(fn: Callable, *args, platforms: Sequence[str] = PLATFORMS,
           disabled_checks: Iterable = ()) -> jax.export.Exported:
  """`fn` (jitted, or jitted here) lowered for `platforms` from abstract `args`."""
  if not hasattr(fn, "trace"):
    fn = jax.jit(fn)
  return jax.export.export(fn, platforms=tuple(platforms),
                           disabled_checks=list(disabled_checks))(*args)


def module_text(exported: "jax.export.Exported | str") -> str:
  return exported if isinstance(exported, str) else exported.mlir_module()


def custom_call_targets(exported: "jax.export.Exported | str") -> set[str]:
  """The custom-call targets in an exported module (kernels: "tpu_custom_call" for Mosaic
  TPU, "__gpu$xla.gpu.triton" for Triton, "mosaic_gpu..." for Mosaic GPU)."""
  return {a or b for a, b in _CUSTOM_CALL.findall(module_text(exported))}


def abstract(tree, sharding=None):
  """ShapeDtypeStructs of a pytree of arrays (or of ShapeDtypeStructs), with `sharding`."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


def abstract_data_mesh(num_devices: int) -> AbstractMesh:
  """A data-parallel mesh of `num_devices` devices that need not exist (for lowering)."""
  return AbstractMesh((num_devices,), (parallel.DATA_AXIS,), axis_types=(AxisType.Auto,))


def abstract_batch(kind: str, data_spec, batch_size: int, sharding=None) -> dict:
  """A training batch of process `kind` on data described by `data_spec` (a DataSpec):
  int32 tokens [B, L] for the token processes, float32 inputs [B, *shape] otherwise."""
  from ardiff.runs import TOKEN_KINDS

  if data_spec.kind == "image" and kind in TOKEN_KINDS:
    x = jax.ShapeDtypeStruct((batch_size, data_spec.num_tokens), jnp.int32, sharding=sharding)
  else:
    x = jax.ShapeDtypeStruct((batch_size, *data_spec.shape), jnp.float32, sharding=sharding)
  return {"x": x, "y": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding)}


def _key_struct(sharding=None) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding)


def train_step_program(process, cfg, batch: dict, mesh) -> tuple[Callable, tuple]:
  """(jitted guarded train step, its abstract arguments) for `process` under TrainConfig `cfg`,
  as `ardiff.train` runs it: state and divergence replicated over `mesh`, the batch sharded on
  its data axis, the state donated. `batch`: abstract arrays (`abstract_batch`); `mesh`: a
  concrete or abstract data mesh. Nothing is initialised: the state's shapes come from
  `jax.eval_shape` of the initialiser."""
  from ardiff.train import Divergence, guarded_train_step, init_state, make_optimizer

  repl, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  tx = make_optimizer(cfg)
  state = jax.eval_shape(functools.partial(init_state, process, tx), batch, jax.random.key(0))
  step = jax.jit(functools.partial(guarded_train_step, process, tx, cfg.ema_decay,
                                   ema_warmup=cfg.ema_warmup, grad_accum=cfg.grad_accum),
                 in_shardings=(repl, repl, data, repl), out_shardings=(repl, repl, repl),
                 donate_argnums=0)
  args = (abstract(state, repl), abstract(jax.eval_shape(Divergence.none), repl),
          abstract(batch, data), _key_struct(repl))
  return step, args


def abstract_params(process, kind: str, data_spec) -> Any:
  """The process's parameters as ShapeDtypeStructs (traced, never initialised)."""
  batch = abstract_batch(kind, data_spec, 1)
  return jax.eval_shape(process.init_params, jax.random.key(0), batch)


def staged(fn: Callable) -> Callable:
  """`fn` with what it computes from concrete values done at trace time, as when it is called
  outside a trace (sampling time grids from a schedule, plans, keys): only what depends on the
  traced arguments is staged. For wrappers that prepare host values before calling their
  jitted core (`process.sample`, `inpaint`, ...), so that they can be jitted whole."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
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
           "train_step_program"]
