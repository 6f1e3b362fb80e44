"""Choosing a kernel per platform at lowering time, and lowering for accelerators from a CPU.

Every attention path here has three bodies: XLA's (CPU, and the reference), a Pallas TPU kernel
(Mosaic) and a Pallas GPU kernel (Triton). :func:`by_platform` picks one with
``jax.lax.platform_dependent``, i.e. when the program is *lowered* for a platform, not from
``jax.default_backend()`` at trace time: a program exported from a CPU host for
``platforms=("tpu", "cuda")`` carries the TPU kernel for TPUs and the Triton kernel for GPUs, and
never Pallas's interpreter (which is only ever chosen by name, in tests, see ``IMPLS``).

:func:`export_for` lowers a jitted function for accelerators without having one: Pallas's TPU
lowering asks for the device kind, which a CPU host answers "cpu"; under :func:`abstract_tpu`
it answers with an abstract TPU (v5e by default). A successful export means "lowers": the
block-shape rules, the jaxpr-to-Mosaic/Triton lowering and XLA's own lowering passed; Mosaic's
and Triton's compilers run only on the device (``ardiff bench accelerator`` does that).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, Iterator, Sequence

import jax

ACCELERATORS = ("tpu", "cuda")
# The custom-call targets by which a lowered module shows that it carries a kernel, and those
# that would betray an interpreter or a host callback inside an accelerator program.
KERNEL_TARGETS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton"}
HOST_CALLBACK = re.compile(r"callback", re.IGNORECASE)
# Triton custom calls carry no serialisation-compatibility guarantee, so `jax.export` refuses
# them unless told; lowering (what we check) is unaffected.
_DISABLED = (jax.export.DisabledSafetyCheck.custom_call(KERNEL_TARGETS["cuda"]),)


def by_platform(*args, xla: Callable, tpu: Callable, cuda: Callable):
  """``xla(*args)`` on CPU (and any other platform), ``tpu(*args)`` on TPU, ``cuda(*args)`` on
  NVIDIA GPUs, chosen per platform when the enclosing program is lowered."""
  return jax.lax.platform_dependent(*args, cpu=xla, tpu=tpu, cuda=cuda, default=xla)


@contextlib.contextmanager
def abstract_tpu(device_kind: str = "TPU v5 lite", num_cores: int = 1) -> Iterator[None]:
  """Lower Pallas TPU kernels on a host without a TPU (see the module docstring)."""
  from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh

  mesh = AbstractMesh((1,), ("kernel",),
                      abstract_device=AbstractDevice(device_kind, num_cores, "tpu"))
  with use_abstract_mesh(mesh):
    yield


# `stablehlo.custom_call @target(...)` in the generic or the pretty form of the module text.
_CUSTOM_CALL = re.compile(r'custom_call\s*@([\w$.\-]+)|call_target_name\s*=\s*"([^"]+)"')


def module_text(exported: "jax.export.Exported | str") -> str:
  return exported if isinstance(exported, str) else exported.mlir_module()


def custom_call_targets(exported: "jax.export.Exported | str") -> set[str]:
  """The custom-call targets of an exported module (or its text): "tpu_custom_call" for a
  Mosaic TPU kernel, "__gpu$xla.gpu.triton" for Triton, "mosaic_gpu..." for Mosaic GPU."""
  return {a or b for a, b in _CUSTOM_CALL.findall(module_text(exported))}


def export_for(fn: Callable, args: Sequence[Any], platforms: Sequence[str] = ACCELERATORS,
               *, pallas_tpu: bool = False) -> jax.export.Exported:
  """``jax.export`` of ``jax.jit(fn)`` at abstract ``args`` (ShapeDtypeStructs are enough) for
  ``platforms``; ``pallas_tpu``: lower under :func:`abstract_tpu` (needed for Pallas TPU kernels).
  Raises whatever lowering raises."""
  jitted = fn if hasattr(fn, "trace") else jax.jit(fn)
  ctx = abstract_tpu() if pallas_tpu and "tpu" in platforms else contextlib.nullcontext()
  with ctx:
    return jax.export.export(jitted, platforms=tuple(platforms), disabled_checks=_DISABLED)(*args)
