"""Every registered process through the one sampling contract (`ardiff.processes.base`).

Parametrized over `ardiff.build.BUILDERS`: a new process is tested here by registering its
builder with an `example` (a tiny section and a few specs). Besides the example's specs, the
cases come from both sampler registries (`registry_specs`): every Gaussian solver on every
Gaussian process, every token sampler on every token process that accepts it. A new sampler is
tested by registering it (`test_a_new_token_sampler_is_one_file_and_one_line`).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff import build
from ardiff.data.base import Dataset
from ardiff.processes.autoregressive import decode
from ardiff.processes.autoregressive.transformer_process import TransformerProcess
from ardiff.processes.gaussian.samplers import SAMPLERS
from ardiff.processes.guidance import Guidance
from ardiff.processes.token_samplers import (TOKEN_SAMPLERS, TokenSampler, plan_history,
                                             register_sampler)
from ardiff.processes.token_samplers import confidence as confidence_sampler
from ardiff.model_cache import model_inputs
from ardiff.experiment_helpers import check_specs
from tests._xla import with_device_count

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = build.BUILDERS.names()
LEVELS, CLASSES, SHAPE = 5, 3, (4, 4, 1)


def tiny_images(n: int = 32, seed: int = 0) -> Dataset:
  rng = np.random.default_rng(seed)
  x = rng.integers(0, LEVELS, (n, *SHAPE)).astype(np.uint8)
  y = rng.integers(0, CLASSES, n).astype(np.int32)
  return Dataset("tiny", "image", x, y, x[:4], y[:4], CLASSES, LEVELS)


def make_process(kind: str):
  """(process, specs) for a registered kind, on tiny random images; nothing initialised."""
  section, extra, specs = build.BUILDERS.get(kind).example()
  return build.build(kind, section, tiny_images(), **extra), specs


def make(kind: str):
  """(process, params, specs) for a registered kind, on tiny random images."""
  process, specs = make_process(kind)
  data = tiny_images()
  batch = {"x": model_inputs(process, data)[:2], "y": data.y_train[:2]}
  params = process.init_params(jax.random.key(0), batch)
  return process, params, specs


def registry_specs(kind: str, process) -> list[str]:
  """One spec per registered sampler the process takes: every token sampler it lists (a step
  count of 4 where one is needed), every Gaussian solver on a Gaussian process (3 steps)."""
  if isinstance(process, TransformerProcess):
    return [f"{name}:4" if TOKEN_SAMPLERS.get(name).needs_steps else name
            for name in process.samplers]
  if kind.startswith("gaussian"):
    return [f"{name}:3" for name in SAMPLERS.names()]
  return []


@pytest.fixture(scope="module", params=KINDS)
def case(request):
  process, params, specs = make(request.param)
  return request.param, process, params, specs + [
      spec for spec in registry_specs(request.param, process) if spec not in specs]


def test_both_registries_generate_cases():
  """Every token sampler is taken by some process, every solver by the Gaussian ones."""
  taken = {kind: registry_specs(kind, make_process(kind)[0]) for kind in KINDS}
  names = {spec.split(":")[0] for specs in taken.values() for spec in specs}
  assert set(TOKEN_SAMPLERS.names()) <= names
  assert set(SAMPLERS.names()) <= set(n.split(":")[0] for n in taken["gaussian"])


def test_every_builder_has_an_example():
  assert {"gaussian", "raster", "ardm", "oneshot"} <= set(KINDS)
  for kind in KINDS:
    assert build.BUILDERS.get(kind).example is not None, kind


# The batches the tests draw, few and shared, so that the tests of one case reuse compiled
# programs (each is a program per batch shape): 5 labels (the null label among them; not a
# multiple of 8 devices, so the 8-device run pads) and 3.
LABELS = np.array([0, 1, 2, CLASSES, 1], np.int32)  # CLASSES = the null label


def test_samples_are_levels_in_the_data_shape(case):
  kind, process, params, specs = case
  for spec in specs:
    x = np.asarray(process.sample(params, jax.random.key(1), LABELS, spec))
    assert x.shape == (5, *SHAPE) and x.dtype == np.uint8, (kind, spec)
    assert x.max() < LEVELS, (kind, spec)
    assert process.nfe(spec) >= 1


def test_same_key_same_samples_and_batch_prefix_invariance(case):
  kind, process, params, specs = case
  labels = LABELS
  spec = specs[0]
  a = np.asarray(process.sample(params, jax.random.key(3), labels, spec))
  b = np.asarray(process.sample(params, jax.random.key(3), labels, spec))
  np.testing.assert_array_equal(a, b)
  # Per-example keys: the first 3 samples do not depend on how many others were drawn.
  c = np.asarray(process.sample(params, jax.random.key(3), labels[:3], spec))
  np.testing.assert_array_equal(a[:3], c)
  # ... nor on how many came before it: the suffix drawn alone with its own keys.
  from ardiff.processes import randomness
  keys = randomness.example_keys(jax.random.key(3), len(labels))
  e = np.asarray(process.sample(params, keys[3:], labels[3:], spec))
  np.testing.assert_array_equal(a[3:], e)
  if not getattr(process, "deterministic", False):
    d = np.asarray(process.sample(params, jax.random.key(4), labels, spec))
    assert (a != d).any(), kind


def test_nfe_is_counted_and_guidance_doubles_it(case):
  kind, process, params, specs = case
  # Counted by hand for the example specs (16 pixels; T = 20); specs added later are skipped.
  expected = {"raster": 16, "raster:temperature=0.8": 16, "ardm": 16, "ardm:k=3": 6,
              "ardm:k=4:order=contiguous": 4, "ardm:sizes=(1,15)": 2, "oneshot": 1,
              "ddpm:4": 4, "ddim:3": 3, "ddim:3:eta=0.5": 3, "ddpm:5:noise=0": 5,
              "confidence:4": 4, "masked:4": 4, "masked:3:temperature=0.8": 3,
              "confidence:5:temperature=0:schedule=uniform:noise=1.0": 5,
              "upscale": 32, "upscale:k=3:temperature=0.8": 12,  # 2 stages of 16 / k steps
              "ddpm:3": 3, "euler_a:3": 3, "dpmpp_2m:3": 3, "dpmpp_3m:3": 3,
              "heun:3": 5}  # Heun: 2 calls a step, 1 in the last
  for spec in specs:
    if spec in expected:
      assert process.nfe(spec) == expected[spec], (kind, spec)
  try:
    process.nfe(specs[0], guidance=Guidance(2.0))
  except ValueError as e:  # a process without guidance says so
    assert "no guidance" in str(e)
    return
  for spec in specs:
    assert process.nfe(spec, guidance=Guidance(2.0)) == 2 * process.nfe(spec)
  # Guided sampling runs, and w = 1 equals the conditional model.
  labels = np.array([0, 1, 2], np.int32)
  plain = np.asarray(process.sample(params, jax.random.key(5), labels, specs[0]))
  w1 = np.asarray(process.sample(params, jax.random.key(5), labels, specs[0],
                                 guidance=Guidance(1.0)))
  if kind.startswith("gaussian"):  # floats rounded to levels: equal up to rare rounding flips
    assert np.mean(plain == w1) > 0.95
  else:
    np.testing.assert_array_equal(plain, w1)


def test_bad_specs_and_labels_name_the_problem(case):
  kind, process, params, specs = case
  with pytest.raises(ValueError, match="unknown sampler 'nope'.*known: "):
    process.nfe("nope")
  with pytest.raises(ValueError, match="option"):
    process.nfe(f"{specs[0]}:bogus=1")
  with pytest.raises(ValueError, match="labels must lie in"):
    process.sample(params, jax.random.key(0), np.array([CLASSES + 1]), specs[0])


SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from ardiff import parallel
  from ardiff.threefry_cpu import use_straight_line_threefry
  from tests.conftest import use_session_compile_cache
  use_straight_line_threefry()  # as in the test session (tests/conftest.py): same bits
  use_session_compile_cache()  # the initialisers compiled there load from it
  from tests.processes.test_contract import KINDS, LABELS, make
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for kind in KINDS:
    process, params, specs = make(kind)
    for spec in specs[:2]:
      out[f"{kind} {spec}"] = np.asarray(process.sample(
          params, jax.random.key(7), LABELS, spec, mesh=parallel.data_mesh())).tolist()
  print("RESULT" + json.dumps(out))
""")


def test_samples_do_not_depend_on_the_device_count(tmp_path):
  """The same draws on 8 devices (a subprocess with 8 host devices; 5 labels, so the batch is
  padded) as on this process's one (where the other contract tests compiled them already)."""
  env = dict(os.environ, XLA_FLAGS=with_device_count(8),
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  assert len(result) >= 2 * len(KINDS) - 1
  assert jax.device_count() == 1
  made = {}
  for name, eight in result.items():
    kind, spec = name.split(" ", 1)
    if kind not in made:
      made[kind] = make(kind)
    process, params, _ = made[kind]
    one = np.asarray(process.sample(params, jax.random.key(7), LABELS, spec))
    eight = np.asarray(eight)
    assert one.shape[0] == 5, name
    if name.startswith("gaussian"):  # levels from floats: equal up to rare rounding flips
      assert np.mean(one == eight) > 0.98, name
    else:
      np.testing.assert_array_equal(one, eight, err_msg=name)


def test_preview_spec_is_one_the_process_takes(case):
  kind, process, _, _ = case
  assert build.BUILDERS.get(kind).preview, (
      f"builder {kind!r} has no preview spec (the TensorBoard sample grids)")
  preview = build.preview_spec(kind, process)
  check_specs(process, [preview], "preview")
  assert 1 <= process.nfe(preview) <= 64  # a preview must stay cheap


def check_history(kind: str, process, params, spec: str) -> None:
  """`sample_history`: float32 [S, B, *data_shape], S the spec's steps, NaN where hidden; the
  last entry equal to `sample` under the same key (token processes); a pixel once revealed
  keeps its final value (coarse-to-fine ones only refined within their bin); NaN count
  non-increasing; the counts revealed per step are the spec's step sizes (1 per step for
  raster; the plan's sizes for ARDM and confidence)."""
  labels = np.array([0, CLASSES, 2], np.int32)
  parsed = process.parse(spec)
  history = process.sample_history(params, jax.random.key(9), labels, spec)
  steps = process.steps(spec) if hasattr(process, "steps") else parsed.steps
  assert history.shape == (steps, 3, *SHAPE), (kind, spec, history.shape)
  assert history.dtype == np.float32, (kind, spec, history.dtype)
  flat = history.reshape(steps, 3, -1)
  revealed = ~np.isnan(flat)
  assert (revealed[1:] >= revealed[:-1]).all(), (kind, spec)  # NaN count never grows
  if not isinstance(process, TransformerProcess):
    return
  sample = np.asarray(process.sample(params, jax.random.key(9), labels, spec))
  np.testing.assert_array_equal(history[-1], sample, err_msg=f"{kind} {spec}")
  final = sample.reshape(1, 3, -1).astype(int)
  # Revealed pixels are never changed; coarse-to-fine ones only refined (within their bin).
  change = np.abs(np.where(revealed, flat, final) - final)
  assert change.max() < (process.divisors[0] if parsed.name == "upscale" else 1), (kind, spec)
  counts = revealed.sum(axis=2)  # [S, B]
  if parsed.name == "raster":
    sizes = [1] * 16
  elif parsed.name == "ardm":
    sizes = process.step_sizes(parsed)
  elif parsed.name == "confidence":
    sizes = confidence_sampler.reveal_sizes(process, parsed)
  elif parsed.name == "upscale":  # stage 0 reveals k per step, later stages refine
    k = parsed.get("k", 1)
    sizes = [k] * (16 // k) + [16 % k] * (16 % k > 0) + [0] * (steps - -(-16 // k))
  else:  # masked, at_once: random counts or one step, all revealed at the end
    assert (counts[-1] == 16).all()
    return
  np.testing.assert_array_equal(counts, np.cumsum(sizes)[:, None] * np.ones((1, 3), int),
                                err_msg=f"{kind} {spec}")


def test_step_history_ends_in_the_sample(case):
  kind, process, params, specs = case
  if not hasattr(process, "mask_id"):  # token processes only (Gaussian: tests/processes/gaussian)
    return
  for spec in specs:
    check_history(kind, process, params, spec)


# ------------------------------------------------ a new token sampler: one file and one line
# (what would be ardiff/processes/token_samplers/at_once.py: every pixel in one step)


def _at_once_sample(process, params, keys, labels, spec, cond):
  return decode.reveal_step_sample(process.model, params, keys, labels,
                                   jnp.zeros((process.seq_len,), jnp.int32), 1,
                                   temperature=spec.get("temperature", 1.0), cond=cond)


def _at_once_history(process, params, keys, labels, spec):
  tokens = _at_once_sample(process, params, keys, labels, spec, None)
  return plan_history(tokens, jnp.zeros((process.seq_len,), jnp.int32), 1)


AT_ONCE = TokenSampler({"temperature": 1.0}, lambda process, spec: 1, _at_once_sample,
                       _at_once_history, requires=("any_subset",))


@pytest.fixture
def at_once():
  register_sampler("at_once", AT_ONCE)  # the line in token_samplers/__init__.py
  yield
  TOKEN_SAMPLERS._items.pop("at_once")


def test_a_new_token_sampler_is_one_file_and_one_line(at_once):
  """`at_once` registered goes through the whole contract on every process that provides what
  it requires (ARDM and masked diffusion), with no edit to either."""
  process, params, _ = make("ardm")
  assert "at_once" in registry_specs("ardm", process)
  assert "at_once" in make_process("masked")[0].samplers
  labels = np.array([0, 1, 2, CLASSES, 1], np.int32)
  x = np.asarray(process.sample(params, jax.random.key(1), labels, "at_once"))
  assert x.shape == (5, *SHAPE) and x.dtype == np.uint8 and x.max() < LEVELS
  assert process.nfe("at_once") == 1 and process.nfe("at_once", guidance=Guidance(2.0)) == 2
  w1 = process.sample(params, jax.random.key(1), labels, "at_once", guidance=Guidance(1.0))
  np.testing.assert_array_equal(np.asarray(w1), x)
  check_history("ardm", process, params, "at_once")
  check_history("ardm", process, params, "at_once:temperature=0.5")
  with pytest.raises(ValueError, match="has no option"):
    process.nfe("at_once:k=2")
  # Processes that do not provide what it requires refuse it, naming what they take.
  with pytest.raises(ValueError, match="unknown sampler 'at_once'.*known: raster"):
    make_process("raster")[0].nfe("at_once")
