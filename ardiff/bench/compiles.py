"""Count XLA programs compiled inside a block, with `jax.monitoring` listeners.

JAX records one backend-compile event per program it hands to XLA (with the jitted function's
name and the seconds it took), and a cache-hit event when the persistent compilation cache
supplied the executable instead (the event still fires then, with the load time). The
listeners are registered once per process and feed whichever `CompileLog` blocks are open.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter

_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_open: list["CompileLog"] = []
_registered = False


@dataclasses.dataclass
class CompileLog:
  """Programs compiled while the block was open: (name, seconds) in order, and cache hits."""
  programs: list[tuple[str, float]] = dataclasses.field(default_factory=list)
  cache_hits: int = 0

  @property
  def seconds(self) -> float:
    return sum(s for _, s in self.programs)

  def count(self, name: str | None = None) -> int:
    """Programs compiled, or those of one jitted function (e.g. '_sample')."""
    return len(self.named(name))

  def named(self, name: str | None) -> list[tuple[str, float]]:
    if name is None:
      return self.programs
    return [p for p in self.programs if p[0] in (name, f"jit({name})")]

  def by_name(self) -> Counter:
    return Counter(name for name, _ in self.programs)


def _on_duration(event: str, duration: float, **kwargs) -> None:
  if event == _BACKEND_COMPILE:
    for log in _open:
      log.programs.append((str(kwargs.get("fun_name", "?")), float(duration)))


def _on_event(event: str, **kwargs) -> None:
  if event == _CACHE_HIT:
    for log in _open:
      log.cache_hits += 1


@contextlib.contextmanager
def compile_log():
  """`with compile_log() as log:` ... then log.count('_sample'), log.seconds."""
  global _registered
  import jax

  if not _registered:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    jax.monitoring.register_event_listener(_on_event)
    _registered = True
  log = CompileLog()
  _open.append(log)
  try:
    yield log
  finally:
    _open.remove(log)
