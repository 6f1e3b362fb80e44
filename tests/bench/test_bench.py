"""The bench timer (with fake callables: no assertions on real code speed) and the tables."""

import time

import pytest

from ardiff.bench import columns, table
from ardiff.bench.timer import MIN_REPEATS, Timing, interleaved, ratio


def test_timer_warms_each_once_then_interleaves():
  calls = []

  def make(name):
    def fn():
      calls.append(name)
      return name
    return fn

  blocked = []
  timings = interleaved({"a": make("a"), "b": make("b"), "c": make("c")}, repeats=6,
                        block=blocked.append)
  assert calls == ["a", "b", "c"] + ["a", "b", "c"] * 6  # warm-up round, then A, B, C, ...
  assert blocked == calls  # every result, warm-up included, is blocked on
  assert list(timings) == ["a", "b", "c"]
  assert all(len(t.times) == 6 for t in timings.values())


def test_timer_statistics_with_a_fake_clock():
  durations = iter([100.0, 5.0, 1.0, 3.0, 2.0, 4.0])  # the untimed warm-up, then 5 timed calls
  now = [0.0]

  def fn():
    now[0] += next(durations)

  t = interleaved({"a": fn}, repeats=5, block=lambda x: x, clock=lambda: now[0])["a"]
  assert t.times == (5.0, 1.0, 3.0, 2.0, 4.0)
  assert (t.min, t.median, t.max) == (1.0, 3.0, 5.0)


def test_timer_with_sleeps_orders_loosely():
  t = interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, repeats=5,
                  block=lambda x: x)
  for timing in t.values():
    assert timing.min <= timing.median <= timing.max
  assert t["slow"].min >= 0.01  # a sleep lasts at least its argument
  assert t["fast"].median < t["slow"].median
  assert ratio(t, "slow", "fast") == t["slow"].median / t["fast"].median > 1


def test_timer_needs_five_repeats():
  with pytest.raises(ValueError, match="at least 5"):
    interleaved({"a": lambda: None}, repeats=MIN_REPEATS - 1, block=lambda x: x)
  with pytest.raises(ValueError):
    interleaved({}, block=lambda x: x)


def test_timing_ms_formats_median_and_range():
  assert Timing((0.001, 0.002, 0.004, 0.003, 0.005)).ms() == "3 (1–5)"
  assert Timing((0.2, 0.1, 0.3, 0.4, 0.5)).ms(scale=0.5) == "150 (50–250)"


def test_table_columns_are_the_union_over_rows():
  rows = [{"model": "train", "steps/s": 2.0}, {"model": "ddim", "images/s": 5.0}]
  assert columns(rows) == ["model", "steps/s", "images/s"]
  header = table(rows).splitlines()[0]
  assert "images/s" in header and "steps/s" in header


@pytest.mark.parametrize("what", ["diffusion", "train"])
def test_bench_quick_prints_a_table(what):
  from ardiff import bench

  text = bench.run(what, quick=True)
  assert "Device:" in text and "interleaved" in text
  lines = [line for line in text.splitlines() if line.startswith("| ")]
  header, rows = lines[0].split(" | "), lines[1:]
  assert len(rows) >= 2  # at least two measured rows
  if what == "diffusion":  # every row, training and sampling, has its images/s
    col = [c.strip(" |") for c in header].index("images/s")
    assert all(row.split(" | ")[col].strip(" |") for row in rows)
