"""Every accelerator program lowers for TPU and CUDA from this CPU (`jax.export`, nothing runs).

One `jax.export` for ("tpu", "cuda") runs every op's lowering rule for both platforms, so a
program fails here if either platform's lowering refuses it (`test_export_lowers_each_platform`
shows it with a Pallas kernel that only TPU refuses); the failure names the program and the
platform. Lowered is not compiled: XLA:TPU, Mosaic and Triton only run on a device. Inputs are
`jax.ShapeDtypeStruct`s and parameters come from `jax.eval_shape`, so the paper- and
MNIST-scale programs cost tracing, not memory. The XLA programs need no abstract TPU device
(`AbstractMesh(..., abstract_device=...)`): only Pallas kernels do.

Covered, generated from the registries, so that a new builder or sampler is covered by
registering it:
  - the guarded train step (as `ardiff.train` jits it) of every builder family of
    `ardiff.build.BUILDERS` at every scale of `ardiff.presets.SCALES` (the model
    section `image_config` gives at that scale, in its dtype; a family whose example section
    is of no known kind keeps it), on one device and on an 8-device data mesh (an
    `AbstractMesh`: no devices needed; traced once, exported on each mesh), and the spiral's
    point diffusion;
  - every sampler each process registers (the "known:" list of its unknown-sampler error, the
    contract of `ardiff.processes.base`) at its defaults and in the builder's example specs,
    and each guided (classifier-free, with a negative label) where the process has guidance,
    on the builder's example network (tiny images, as tests/processes/test_contract.py: the
    networks at every scale are lowered in the train steps); the raster KV-cache decode at
    the MNIST scale; every diffusion solver on points, with inpainting and with classifier
    guidance; ARDM inpainting.
Cost: ~140 CPU-seconds on one core (tracing, mostly flax's).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ardiff import build, lowering
from ardiff import presets as sections
from ardiff.data import data_spec
from ardiff.data.base import DataSpec
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import parse_spec
from ardiff.train import TrainConfig

PLATFORMS = lowering.PLATFORMS
KINDS = build.BUILDERS.names()
SCALES = sections.SCALES
MESHES = (1, 8)
# The diffusion transformer's patch size per scale, as experiments/ar_vs_diffusion.py sets it.
DIT_PATCH = {"mnist": 2}
# Samplers run each builder's example network (its `example` section) on tiny images, as
# tests/processes/test_contract.py does, so that every example spec fits: the networks at
# every scale are lowered in the train steps (their forward pass included), the samplers'
# loops around them here.
EXAMPLE = "example"
POINTS = "points"  # the spiral experiment's point diffusion
TINY = DataSpec("tiny", "image", (4, 4, 1), 3, 5)


def lower(what: str, fn, *args, **kwargs) -> jax.export.Exported:
  """`lowering.export` for both platforms; on failure, a message naming the program and the
  platform(s) that refuse it."""
  try:
    return lowering.export(fn, *args, **kwargs)
  except Exception as e:  # noqa: BLE001 - any lowering error fails the test, with its cause
    failing = []
    for platform in PLATFORMS:
      try:
        lowering.export(fn, *args, platforms=(platform,), **kwargs)
      except Exception:  # noqa: BLE001
        failing.append(platform)
    pytest.fail(f"{what} does not lower for {', '.join(failing) or ' + '.join(PLATFORMS)}: "
                f"{type(e).__name__}: {str(e)[:2000]}", pytrace=False)


def check_module(exported, what: str, devices: int = 1) -> None:
  assert exported.platforms == PLATFORMS, what
  assert exported.nr_devices == devices, (what, exported.nr_devices)


def check_batch_sharded(exported, what: str) -> None:
  """The batch's arrays (x and y) come in sharded over the data axis."""
  text = lowering.module_text(exported)
  assert text.count('sdy.sharding = #sdy.sharding<@mesh, [{"data"}') >= 2, what


# ------------------------------------------------------------------- sections at each scale


@functools.lru_cache(maxsize=None)
def scale_config(scale: str) -> ml_collections.ConfigDict:
  return sections.image_config(scale, ar=True, diffusion=True)


def _is(section, template) -> bool:
  return set(section) <= set(template)


def scaled(kind: str, scale: str):
  """(section, extra sections, dtype, DataSpec) of builder `kind` at `scale`: the model section
  of that scale's kind (transformer, UNet, one-shot MLP) in place of the example's, the scale's
  diffusion section, the example's other extra sections. `EXAMPLE`: the builder's example on
  `TINY` images."""
  section, extra, _ = build.BUILDERS.get(kind).example()
  if scale == EXAMPLE:
    return section, extra, "float32", TINY
  c = scale_config(scale)
  if _is(section, sections.unet_section()):
    section = c.unet
  elif _is(section, sections.transformer_section()):
    section = ml_collections.ConfigDict(c.ar.to_dict())
    if kind == "gaussian_transformer" and scale in DIT_PATCH:
      section.patch_size = DIT_PATCH[scale]
  elif _is(section, sections.oneshot_section()):
    section = sections.oneshot_section()
  extra = {name: c.diffusion if name == "diffusion" else value for name, value in extra.items()}
  return section, extra, c.dtype, data_spec(c.dataset)


@functools.lru_cache(maxsize=None)
def scaled_process(kind: str, scale: str):
  if scale == POINTS:
    assert kind == "gaussian", kind
    return spiral()[:2]
  section, extra, dtype, spec = scaled(kind, scale)
  return build.build(kind, section, spec, dtype=dtype, **extra), spec


@functools.partial(jax.jit, static_argnums=(0, 1))
def _apply(module, static, params, args, traced):
  # Traced even inside `lowering.staged`'s compile-time evaluation: flax checks each
  # parameter's shape by evaluating its initialiser on a constant key, which would otherwise
  # compile and run every initialiser on the CPU (~15 s for a UNet).
  with _no_compile_time_eval():
    return module.apply(params, *args, **dict(static), **traced)


def _no_compile_time_eval():
  """Undo `jax.ensure_compile_time_eval` inside (a private switch of jax; without it, only
  slower)."""
  import contextlib

  try:
    from jax._src import config as jax_config

    return jax_config.eager_constant_folding(False)
  except (ImportError, AttributeError):
    return contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class SharedNetwork:
  """A network whose `apply` is one jitted function, traced once per input shape and shared by
  every program that calls it (the samplers of one process): the programs lowered are the
  same, with the network as a called function instead of inlined."""

  module: Any

  def apply(self, params, *args, **kwargs):
    static = tuple(sorted((k, v) for k, v in kwargs.items()
                          if v is None or isinstance(v, (bool, str))))
    traced = {k: v for k, v in kwargs.items() if k not in dict(static)}
    return _apply(self.module, static, params, args, traced)

  def __getattr__(self, name):
    return getattr(self.module, name)


@functools.lru_cache(maxsize=None)
def sampling_process(kind: str, scale: str):
  """`scaled_process`, its network shared across samplers where the process is a dataclass
  that takes any network (the diffusion processes; token processes require a Transformer)."""
  process, spec = scaled_process(kind, scale)
  if dataclasses.is_dataclass(process) and hasattr(process, "model"):
    process = dataclasses.replace(process, model=SharedNetwork(process.model))
  return process, spec


def spiral():
  """The spiral experiment's point diffusion (an MLP denoiser), for the points code path."""
  spec = DataSpec("spiral", "points", (2,), 3, None, (0.0, 0.0), (1.0, 1.0))
  process = build.build("gaussian", ml_collections.ConfigDict(dict(width=192, depth=4)), spec,
                        diffusion=sections.diffusion_section(p_uncond=0.3))
  return process, spec, TrainConfig(batch_size=512)


# ------------------------------------------------------------------------- train steps


@functools.lru_cache(maxsize=None)
def train_programs(kind: str, scale: str) -> dict:
  """{devices: (jitted step, abstract args)}, from one trace of the step of `kind` at `scale`
  (`scale` "points": the spiral's point diffusion)."""
  if scale == POINTS:
    process, spec, cfg = spiral()
  else:
    process, spec = scaled_process(kind, scale)
    cfg = TrainConfig.from_config(scale_config(scale).train)
  batch = lowering.abstract_batch(process, spec, cfg.batch_size)
  meshes = [lowering.abstract_data_mesh(n) for n in MESHES]
  return dict(zip(MESHES, lowering.train_step_programs(process, cfg, batch, meshes)))


@pytest.mark.parametrize("devices", MESHES, ids=lambda n: f"{n}dev")
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", KINDS)
def test_train_step_lowers(kind, scale, devices):
  what = f"train step of {kind!r} at scale {scale!r} on {devices} device(s)"
  step, args = train_programs(kind, scale)[devices]
  exported = lower(what, step, *args)
  check_module(exported, what, devices)
  if devices > 1:
    check_batch_sharded(exported, what)


@pytest.mark.parametrize("devices", MESHES, ids=lambda n: f"{n}dev")
def test_point_diffusion_train_step_lowers(devices):
  what = f"train step of 'gaussian' on points on {devices} device(s)"
  step, args = train_programs("gaussian", POINTS)[devices]
  check_module(lower(what, step, *args), what, devices)


# ------------------------------------------------------------------------------ samplers

SAMPLER_SCALE = EXAMPLE
# Labels of the sampled batch: classes and the null label (appended per process).
LABELS = (0, 1, 2)


def registered_samplers(process) -> list[str]:
  """The sampler names a process takes: the 'known:' list its unknown-sampler error gives
  (the contract tests/processes/test_contract.py checks)."""
  try:
    process.nfe("no_such_sampler")
  except ValueError as e:
    return [name.strip() for name in re.search(r"known: (.*)$", str(e)).group(1).split(",")]
  raise AssertionError(f"{type(process).__name__} took the sampler 'no_such_sampler'")


def accepted(process, spec: str, guidance=None) -> bool:
  try:
    process.nfe(spec, guidance=guidance)
    return True
  except ValueError:
    return False


def default_spec(process, name: str) -> str:
  """`name` at its defaults, with a few steps where it needs a step count."""
  for spec in (name, f"{name}:4", f"{name}:2"):
    if accepted(process, spec):
      return spec
  raise AssertionError(f"sampler {name!r} of {type(process).__name__} takes none of "
                       f"{name!r}, '{name}:4', '{name}:2'")


def has_guidance(process, spec: str) -> bool:
  try:
    process.nfe(spec, guidance=Guidance(2.0))
    return True
  except ValueError as e:
    assert "no guidance" in str(e), e
    return False


def sampler_cases() -> list[tuple[str, str, bool]]:
  """(kind, spec, guided) for every registered sampler of every builder family at its
  defaults, the builder's example specs, and each sampler's default spec guided."""
  cases = []
  for kind in KINDS:
    process, _ = scaled_process(kind, SAMPLER_SCALE)
    defaults = [default_spec(process, name) for name in registered_samplers(process)]
    specs = dict.fromkeys(defaults + build.BUILDERS.get(kind).example()[2])
    cases += [(kind, spec, False) for spec in specs]
    cases += [(kind, spec, True) for spec in defaults if has_guidance(process, spec)]
  return cases


SAMPLER_CASES = sampler_cases()


@functools.lru_cache(maxsize=None)
def params_of(kind: str, scale: str):
  process, spec = scaled_process(kind, scale)
  return lowering.abstract_params(process, spec)


def _labels(process) -> np.ndarray:
  return np.array([*LABELS, process.num_classes], np.int32)


def _sample(kind: str, scale: str, spec: str, guided: bool):
  process, _ = sampling_process(kind, scale)
  guidance = Guidance(2.0, negative=0) if guided else None
  what = (f"sampler {spec!r}{' guided' if guided else ''} of {kind!r} at scale {scale!r}")
  fn = lowering.sample_program(process, spec, _labels(process), guidance=guidance)
  check_module(lower(what, fn, params_of(kind, scale)), what)


@pytest.mark.parametrize("kind,spec,guided", SAMPLER_CASES,
                         ids=[f"{k}-{s}{'-guided' if g else ''}" for k, s, g in SAMPLER_CASES])
def test_sampler_lowers(kind, spec, guided):
  _sample(kind, SAMPLER_SCALE, spec, guided)


def test_every_registered_sampler_is_covered():
  for kind in KINDS:
    process, _ = scaled_process(kind, SAMPLER_SCALE)
    covered = {parse_spec(s).name for k, s, _ in SAMPLER_CASES if k == kind}
    assert set(registered_samplers(process)) <= covered, kind
  assert {"gaussian", "raster", "ardm", "masked", "upscale"} <= set(KINDS)
  names = {parse_spec(s).name for _, s, _ in SAMPLER_CASES}
  assert {"ddpm", "ddim", "raster", "ardm", "confidence", "masked", "upscale",
          "ddpm_learned"} <= names, names


@pytest.mark.parametrize("guided", [False, True], ids=["plain", "guided"])
def test_raster_kv_cache_decode_lowers_at_mnist_scale(guided):
  _sample("raster", "mnist", "raster", guided)


# ----------------------------------------------------- inpainting and classifier guidance


def _solvers() -> list[str]:
  from ardiff.processes.gaussian import samplers

  return samplers.SAMPLERS.names()


@pytest.mark.parametrize("solver", _solvers())
def test_point_diffusion_sampler_lowers(solver):
  process, _ = scaled_process("gaussian", POINTS)
  for guided in (False, True):
    _sample("gaussian", POINTS, default_spec(process, solver), guided)


@pytest.mark.parametrize("solver", _solvers())
def test_diffusion_inpainting_lowers(solver):
  from ardiff.processes.gaussian.inpaint import inpaint

  process, spec = sampling_process("gaussian", SAMPLER_SCALE)
  labels = _labels(process)
  x_known = jax.ShapeDtypeStruct((len(labels), *spec.shape), jnp.float32)
  mask = np.zeros(spec.shape, bool)
  mask[: spec.shape[0] // 2] = True  # the top half known

  @lowering.staged
  def fn(params, x_known):
    return inpaint(process.eps_fn, params, process.schedule, x_known, mask, jax.random.key(0),
                   jnp.asarray(labels), sampler=solver, num_steps=4)

  what = f"inpainting with {solver!r} of 'gaussian' at scale {SAMPLER_SCALE!r}"
  check_module(lower(what, fn, params_of("gaussian", SAMPLER_SCALE), x_known), what)


@pytest.mark.parametrize("solver", _solvers())
def test_classifier_guidance_lowers(solver):
  from ardiff.models.noisy_classifier import NoisyClassifierNet
  from ardiff.processes.gaussian.classifier_guidance import (NoisyClassifier,
                                                             sample_with_classifier)

  process, spec = sampling_process("gaussian", SAMPLER_SCALE)
  classifier = NoisyClassifier.for_process(
      process, SharedNetwork(NoisyClassifierNet(process.num_classes)))
  classifier_params = jax.eval_shape(
      classifier.init_params, jax.random.key(0),
      {"x": jax.ShapeDtypeStruct((1, *spec.shape), jnp.float32)})
  labels = np.array(LABELS, np.int32)

  @lowering.staged
  def fn(params, classifier_params):
    return sample_with_classifier(process, params, classifier, classifier_params,
                                  jax.random.key(0), labels, default_spec(process, solver), 3.0)

  what = f"classifier guidance with {solver!r} of 'gaussian' at scale {SAMPLER_SCALE!r}"
  check_module(lower(what, fn, params_of("gaussian", SAMPLER_SCALE), classifier_params), what)


def test_ardm_inpainting_lowers():
  from ardiff.processes.autoregressive import decode
  from ardiff.processes.guidance import guidance_cond
  from tests.processes.autoregressive import plans

  process, spec = scaled_process("ardm", SAMPLER_SCALE)
  labels = _labels(process)
  known = np.zeros((len(labels), spec.num_tokens), bool)
  known[:, : spec.num_tokens // 2] = True
  plan = plans.inpainting_plan(jax.random.key(1), known, k=4)

  @lowering.staged
  def fn(params, tokens):
    return decode.order_agnostic_sample(process.model, params, jax.random.key(0), labels, plan,
                                        cond=guidance_cond(labels, Guidance(2.0),
                                                           process.num_classes),
                                        known_mask=known, known_tokens=tokens)

  tokens = jax.ShapeDtypeStruct(known.shape, jnp.int32)
  what = f"ARDM inpainting of 'ardm' at scale {SAMPLER_SCALE!r}"
  check_module(lower(what, fn, params_of("ardm", SAMPLER_SCALE), tokens), what)


# ------------------------------------------------------------- the check can fail


def _copy_kernel(x, rows: int):
  from jax.experimental import pallas as pl

  def kernel(x_ref, o_ref):
    o_ref[...] = x_ref[...] * 2

  block = pl.BlockSpec((rows, x.shape[1]), lambda i: (i, 0))
  return pl.pallas_call(kernel, out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
                        grid=(x.shape[0] // rows,), in_specs=[block], out_specs=block)(x)


def test_export_lowers_each_platform():
  """A kernel whose block shape TPU refuses (4 rows: not a multiple of 8, not the whole array)
  lowers for cuda alone and fails for tpu, alone or with cuda: one two-platform export lowers
  each platform. With 8 rows both lower, each with its own kernel custom call."""
  from jax.sharding import AbstractDevice, AbstractMesh

  tpu = AbstractMesh((1,), ("x",), abstract_device=AbstractDevice("TPU v5 lite", 1, "tpu"))
  x = jax.ShapeDtypeStruct((16, 128), jnp.float32)
  with jax.sharding.use_abstract_mesh(tpu):
    good = lowering.export(functools.partial(_copy_kernel, rows=8), x)
    assert {"tpu_custom_call"} <= lowering.custom_call_targets(good)
    assert len(lowering.custom_call_targets(good)) == 2  # and the GPU kernel's
    bad = functools.partial(_copy_kernel, rows=4)
    lowering.export(bad, x, platforms=("cuda",))
    for platforms in (("tpu",), PLATFORMS):
      with pytest.raises(ValueError, match="divisible by 8 and 128"):
        lowering.export(bad, x, platforms=platforms)


def test_export_refuses_a_host_callback():
  """A host callback has no accelerator lowering: the check fails on it, naming the program."""
  def fn(x):
    return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  x = jax.ShapeDtypeStruct((4,), jnp.float32)
  with pytest.raises(pytest.fail.Exception, match="callback-program does not lower"):
    lower("callback-program", fn, x)
