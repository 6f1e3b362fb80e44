"""The one timer every bench uses: interleaved repeats, median and min-max.

    timings = interleaved({"scan": lambda: sample(...), "loop": lambda: loop(...)}, repeats=5)
    speedup = ratio(timings, "loop", "scan")  # median loop time / median scan time

Each callable takes no arguments and returns its result; the timer blocks on that result
(`jax.block_until_ready`), so asynchronous dispatch is never timed as if it were the work.
Each callable is called once untimed first (compilation, caches), then the callables run
interleaved A, B, A, B, ... for `repeats` rounds, so a slow spell of a shared machine hits
every contender alike instead of whichever happened to run then. Ratios come from medians
measured in the same call.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any, Callable, Mapping

MIN_REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Timing:
  """Wall seconds of one callable over the timed repeats."""

  times: tuple[float, ...]

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def min(self) -> float:
    return min(self.times)

  @property
  def max(self) -> float:
    return max(self.times)

  def ms(self, scale: float = 1.0) -> str:
    """'median (min-max)' in milliseconds, each multiplied by `scale` first (e.g. per step)."""
    med, lo, hi = (1e3 * scale * v for v in (self.median, self.min, self.max))
    return f"{_g(med)} ({_g(lo)}–{_g(hi)})"


def _g(v: float) -> str:
  return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _block(x: Any) -> Any:
  import jax

  return jax.block_until_ready(x)


def interleaved(
    fns: Mapping[str, Callable[[], Any]], repeats: int = MIN_REPEATS, *,
    block: Callable[[Any], Any] = _block, clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Timing]:
  """Time named zero-argument callables: one untimed warm-up call each, in order, then
  `repeats` (>= 5) rounds of one timed call each in the same order.

  Args:
    fns: name -> callable; each returns the result to block on.
    repeats: timed rounds, at least MIN_REPEATS (5).
    block: waits for a result (default jax.block_until_ready); the tests pass a no-op.
    clock: seconds (default time.perf_counter).

  Returns:
    name -> Timing, in the order of `fns`.
  """
  if repeats < MIN_REPEATS:
    raise ValueError(f"repeats must be at least {MIN_REPEATS}, got {repeats}")
  if not fns:
    raise ValueError("nothing to time")
  for fn in fns.values():
    block(fn())
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = clock()
      block(fn())
      times[name].append(clock() - start)
  return {name: Timing(tuple(t)) for name, t in times.items()}


def ratio(timings: Mapping[str, Timing], slow: str, fast: str) -> float:
  """Median time of `slow` over median time of `fast` (> 1: `fast` is faster)."""
  return timings[slow].median / timings[fast].median
