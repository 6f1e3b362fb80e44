import os
import sys

# Tests run on the CPU; multi-device tests start their own subprocess with fake devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
