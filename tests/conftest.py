import os
import sys

# Tests run on the CPU; multi-device tests start their own subprocess with fake devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests that call the CLI (in process or in a subprocess) must not write to the user's
# compilation cache, nor load programs from it: every test compiles afresh.
# tests/test_compile_cache.py gives its subprocesses their own temporary cache directory.
os.environ["ARDIFF_COMPILATION_CACHE"] = "off"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
