"""XLA flags for test subprocesses."""

import os


def with_device_count(n: int) -> str:
  """XLA_FLAGS for a subprocess with n fake CPU devices, keeping any other flag the session
  runs with (a user's XLA_FLAGS reach the subprocess too)."""
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([*kept, f"--xla_force_host_platform_device_count={n}"])
