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


@pytest.mark.parametrize("what", ["diffusion"])  # train: the test below
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


def test_peak_row_and_fraction_of_peak_from_the_same_timings():
  from ardiff.bench.train import PEAK_ROW, TrainCase, peak_row, train_row

  peak = peak_row(Timing((0.4, 0.1, 0.2, 0.5, 0.3)), 6e9)  # median 0.3 s: 20 GFLOP/s
  assert peak["model"] == PEAK_ROW and peak["fraction of peak"] == 1.0
  assert peak["TFLOP/s"] == pytest.approx(0.02)
  case = TrainCase("m", params=1, batch=4, steps=2, flops=1e9, fn=lambda: None)
  row = train_row(case, Timing((0.2, 0.1, 0.4, 0.5, 0.3)), peak=20e9)  # 0.15 s/step
  assert row["TFLOP/s"] == pytest.approx(1e9 / 0.15 / 1e12)
  assert row["fraction of peak"] == pytest.approx(row["TFLOP/s"] * 1e12 / 20e9)


def test_measured_peak_counts_what_xla_counts():
  import jax
  import jax.numpy as jnp

  from ardiff.bench.train import PEAK_SIZE, compiled_flops, peak_case

  fn, flops = peak_case()
  a = jnp.ones((PEAK_SIZE, PEAK_SIZE), jnp.float32)
  assert flops == compiled_flops(jax.jit(jnp.dot).lower(a, a).compile())
  assert fn().shape == (PEAK_SIZE, PEAK_SIZE)


def test_bench_train_quick_has_the_digits_rows_and_their_fraction_of_peak(tmp_path):
  import json

  from ardiff import bench
  from ardiff.bench.train import PEAK_ROW

  text = bench.run("train", quick=True, out=str(tmp_path / "train.md"))
  assert "Device:" in text and "interleaved" in text and "fraction of peak" in text
  rows = json.loads((tmp_path / "train.json").read_text())["benches"]["train"]
  names = [r["model"] for r in rows]
  assert any("digits raster AR" in n for n in names) and any("digits UNet" in n for n in names)
  if bench.on_cpu():  # no listed peak: the one measured in the run, as the last row
    assert names[-1] == PEAK_ROW and rows[-1]["fraction of peak"] == 1.0
    peak = rows[-1]["TFLOP/s"]
    for r in rows[:-1]:
      assert r["TFLOP/s"] > 0 and r["fraction of peak"] > 0
      assert r["fraction of peak"] == pytest.approx(r["TFLOP/s"] / peak)


def test_memory_fit_takes_the_largest_power_of_two_under_the_usable_hbm():
  from ardiff.bench.memory import GIB, USABLE, fit_cells, largest_batch

  memory = {"fixed": 1 * GIB, "temp": 2 * GIB}  # at batch 8: 0.25 GiB per example
  # v5e: 0.9 * 16 - 1 = 13.4 GiB -> 53 examples -> 32; v5p: 0.9 * 95 - 1 = 84.5 -> 338 -> 256.
  assert largest_batch(memory, 8, 16) == 32 and largest_batch(memory, 8, 95) == 256
  assert largest_batch({"fixed": 20 * GIB, "temp": GIB}, 8, 16) == 0  # the state alone is over
  b = largest_batch(memory, 8, 32)
  assert 1 * GIB + 0.25 * GIB * b <= USABLE * 32 * GIB < 1 * GIB + 0.25 * GIB * 2 * b
  cells = fit_cells({"fixed": 1 * GIB, "temp": 16 * GIB}, 64)  # 0.25 GiB/example at batch 64
  assert cells["v5e"] == "32 (2)" and cells["v5p"] == "256 (1)"


def test_memory_bench_quick_compares_the_attentions():
  from ardiff.bench import memory

  rows = memory.rows(quick=True)
  assert [(r["family"], r["attention"]) for r in rows] == [("raster", "xla"), ("raster", "flash")]
  assert all(r["GiB"] > 0 for r in rows) and rows[1]["maps' share"].endswith("%")


def test_accelerator_bench_runs_reduced_and_writes_its_report(tmp_path):
  import json

  from ardiff import cli

  out = tmp_path / "accelerator_report.md"
  assert cli.main(["bench", "accelerator", "--quick", f"--out={out}"]) == 0
  report = json.loads((tmp_path / "accelerator_report.json").read_text())
  rows = report["benches"]["accelerator"]
  kernels = [r for r in rows if "verdict" in r]
  # Both interpreted kernels of each path, checked against XLA (CPU: reduced mode).
  assert {r["impl"] for r in kernels} == {"pallas-tpu-interpret", "pallas-gpu-interpret",
                                          "flash-tpu-interpret", "flash-gpu-interpret"}
  assert all(r["verdict"] == "correct" and r["max err"] <= r["tolerance"] for r in kernels)
  checks = " ".join(r["check"] for r in rows)
  assert "raster decode" in checks and "train step" in checks and "ddim" in checks
  assert "Accelerator acceptance" in out.read_text()


def _median_ms(cell: str) -> float:
  return float(cell.split()[0])  # "median (min–max)"


@pytest.mark.peers
def test_ar_bench_times_hf_generate_beside_the_cache_where_transformers_is_installed():
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  from ardiff.bench import ar

  (row,) = ar.bench_kv_cache(seq_lens=(16,), batch=4, max_timed_steps=4)
  # The ratio columns are the medians' ratios (the cells round them to 3 significant digits).
  hf, cache = _median_ms(row["HF generate ms"]), _median_ms(row["cache ms"])
  assert row["cache vs HF generate"] == pytest.approx(hf / cache, rel=0.01)
  per_sample = {k: _median_ms(row[f"{k} ms"]) * 16 / row[f"{k} steps"]
                for k in ("cache", "recompute")}
  assert row["speedup"] == pytest.approx(per_sample["recompute"] / per_sample["cache"], rel=0.01)
  assert row["cache samples/s"] == pytest.approx(row["speedup"] * row["recompute samples/s"])


def test_ar_bench_has_no_peer_column_without_transformers(monkeypatch):
  from ardiff.bench import ar, hf_peer

  monkeypatch.setattr(hf_peer, "available", lambda: False)
  (row,) = ar.bench_kv_cache(seq_lens=(16,), batch=4, max_timed_steps=4)
  assert not any("HF" in column for column in row) and row["speedup"] > 0
