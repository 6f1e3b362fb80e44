import os
import sys

# Tests run on the CPU; multi-device tests start their own subprocess with fake devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests that call the CLI (in process or in a subprocess) must not write to the user's
# compilation cache, nor load programs from it: every test compiles afresh.
# tests/test_compile_cache.py gives its subprocesses their own temporary cache directory.
os.environ["ARDIFF_COMPILATION_CACHE"] = "off"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# One persistent compilation cache for the whole test session, shared by the xdist workers
# (the controller makes it before the workers start; they inherit the variable) and removed at
# the end: many tests compile the same programs (the tiny UNet's train step costs ~15-30 CPU-s
# to compile on 2 cores; the digit classifier of every experiment smoke run is one program), and
# a program loaded from the cache is the one XLA compiled, so results are unchanged. It is not
# the user's cache (ARDIFF_COMPILATION_CACHE stays off for the CLI) and it starts empty.
SESSION_CACHE_VAR = "ARDIFF_TEST_SESSION_JAX_CACHE"


def _use_session_compile_cache(config):
  import tempfile

  if os.environ.get(SESSION_CACHE_VAR) is None:  # the controller, or a run without xdist
    os.environ[SESSION_CACHE_VAR] = tempfile.mkdtemp(prefix="ardiff-test-jax-cache-")
    config._ardiff_session_cache = os.environ[SESSION_CACHE_VAR]
  use_session_compile_cache()


def use_session_compile_cache():
  """This process's JAX reads and writes the session's cache (a test's subprocess, which
  inherits the variable, may call it too)."""
  import jax

  directory = os.environ.get(SESSION_CACHE_VAR)
  if not directory:
    return
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_configure(config):
  config.addinivalue_line("markers", "xdist_group(name): tests run on one xdist worker")
  _use_session_compile_cache(config)
  # As the command line does (ardiff/cli.py): JAX's random bits unchanged, lowered straight-line
  # on the CPU, which XLA compiles several times faster than JAX's rolled loop
  # (ardiff/threefry_cpu.py; tests/test_threefry_cpu.py checks the bits).
  from ardiff.threefry_cpu import use_straight_line_threefry

  use_straight_line_threefry()


def pytest_unconfigure(config):
  import shutil

  owned = getattr(config, "_ardiff_session_cache", None)
  if owned:  # made by this process (the controller): every worker has finished
    shutil.rmtree(owned, ignore_errors=True)


# The longest tests (measured with --durations on 2 cores), scheduled first so that no worker
# starts one of them while the other has nothing left to do (xdist hands out groups in order).
LONGEST_FIRST = ("test_mnist_comparison_runs_on_mock_tfds_data", "[ar_vs_diffusion.py]",
                 "[digits_diffusion.py]", "[ddpm_vs_ddim.py]", "test_contract.py",
                 "[causal_vs_bidirectional.py]", "[learned_variance.py]", "test_experiments.py",
                 "test_solvers.py")


def _rank(item) -> int:
  """Where the item's group goes (a hint names a test of test_experiments.py, or a whole file:
  a file's tests keep one rank, so serial runs build its module fixtures once)."""
  return next((i for i, hint in enumerate(LONGEST_FIRST) if hint in item.nodeid),
              len(LONGEST_FIRST))


def pytest_collection_modifyitems(config, items):
  """Parallel runs (pytest-xdist, `--dist loadgroup`): a test file's tests run on one worker,
  so its module-scoped trained fixtures are built once, except the tests of
  test_experiments.py, each its own group: they are the longest tests and independent of each
  other. The longest groups come first (LONGEST_FIRST); the rest keep their order."""
  import pytest

  for item in items:
    path = item.nodeid.split("::")[0]
    spread = path.endswith("test_experiments.py")
    item.add_marker(pytest.mark.xdist_group(item.nodeid if spread else path))
  items.sort(key=_rank)  # stable: a file's tests stay together and in order
