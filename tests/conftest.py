import os
import sys

# Tests run on the CPU; multi-device tests start their own subprocess with fake devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests that call the CLI (in process or in a subprocess) must not write to the user's
# compilation cache, nor load programs from it: every test compiles afresh.
# tests/test_compile_cache.py gives its subprocesses their own temporary cache directory.
os.environ["ARDIFF_COMPILATION_CACHE"] = "off"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_configure(config):
  config.addinivalue_line("markers", "xdist_group(name): tests run on one xdist worker")


def pytest_collection_modifyitems(config, items):
  """Parallel runs (pytest-xdist, `--dist loadgroup`): a test file's tests run on one worker,
  so its module-scoped trained fixtures are built once, except the experiment smoke runs, each
  its own group: they are the longest tests and independent of each other."""
  import pytest

  for item in items:
    path = item.nodeid.split("::")[0]
    spread = path.endswith("test_experiments.py") and "[" in item.nodeid
    item.add_marker(pytest.mark.xdist_group(item.nodeid if spread else path))
