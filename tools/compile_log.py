"""A pytest plugin that records, per test, how much of its time JAX spent compiling.

  python -m pytest -p tools.compile_log ... (ARDIFF_COMPILE_LOG=FILE, default compile_log.jsonl)

Appends one JSON line per test (each xdist worker appends to the same file): its node id,
duration, and the seconds and counts of jaxpr tracing, MLIR lowering, XLA backend compiles and
persistent-cache hits, from jax.monitoring's events. Subprocesses a test starts are not seen.
This is how docs/benchmarks/suite.md finds which tests compile what; it changes no result.
"""

from __future__ import annotations

import collections
import json
import os
import time

EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace",
          "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
          "/jax/core/compile/backend_compile_duration": "compile"}
_totals: collections.Counter = collections.Counter()


def _on_duration(event: str, seconds: float, **_) -> None:
  name = EVENTS.get(event)
  if name:
    _totals[name + "_s"] += seconds
    _totals[name + "_n"] += 1


def _on_event(event: str, **_) -> None:
  if event == "/jax/compilation_cache/cache_hits":
    _totals["cache_hits"] += 1


def pytest_configure(config):
  import jax.monitoring

  jax.monitoring.register_event_duration_secs_listener(_on_duration)
  jax.monitoring.register_event_listener(_on_event)


_start = [0.0]


def pytest_runtest_logstart(nodeid, location):
  """Setup (module fixtures built for this test included), call and teardown are counted."""
  _totals.clear()
  _start[0] = time.perf_counter()


def pytest_runtest_logfinish(nodeid, location):
  row = {"test": nodeid, "s": round(time.perf_counter() - _start[0], 2),
         "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}
  row.update({k: round(v, 2) if isinstance(v, float) else v for k, v in _totals.items()})
  with open(os.environ.get("ARDIFF_COMPILE_LOG", "compile_log.jsonl"), "a") as f:
    f.write(json.dumps(row) + "\n")
