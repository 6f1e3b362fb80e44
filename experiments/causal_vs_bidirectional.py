"""Causal vs bidirectional predictors in the same (raster) order, at matched training compute.

  ardiff run experiments/causal_vs_bidirectional.py --workdir=runs/causal_vs_bidirectional

Claim: "causal architectures give slightly worse predictions, but training is so much faster".
Two transformers of the same width and depth (the `ar` section) model the same raster chain
rule p(x) = prod_t p(x_t | x_<t):
  causal         raster AR: one forward pass scores all L conditionals (L supervised
                 predictions per example);
  bidirectional  `raster_bidirectional` (ardiff.processes.autoregressive.bidirectional_raster): x_<t
                 revealed, the rest masked, one random t per example (one prediction per
                 example); its loss L * -log p(x_t | x_<t) is unbiased for the NLL.
Both cost about the same FLOPs per example. FLOPs per train step: XLA's cost analysis of the
compiled train step (`ardiff.bench.train.train_case`, the program `ardiff bench train` times).
The causal model trains `train.steps` steps, which sets the budget B; every run at m x B (m in
`causal_multiples` / `bidirectional_multiples`) trains round(m B / its FLOPs per step) steps
with its own cosine schedule (m = 1: matched compute; m > 1: does the bidirectional model catch
up?). Every run is scored by its exact test NLL (bits per pixel; L network calls per image for
the bidirectional model) at `curve_points` points along training. Throughput: that compiled
step timed alone, both models interleaved (`ardiff.bench.timer`, 5 calls of `timing_steps`
steps each, median), so a slow spell of the shared machine hits both alike: examples/s, and
generation steps trained per second = examples/s x L (causal) or x 1 (bidirectional).

Defaults cut for a loaded 2-core CPU: width 32, 2 heads, depth 2, batch 32, 600 causal steps,
EMA decay 0.99 (0.999 would still hold ~55% of the initial weights at step 600).
Writes bpp_vs_flops.png, bpp_vs_seconds.png, results.md/.csv (one row per run) and
curves.md/.csv (the learning curves).
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from ardiff import build, experiment_helpers, model_cache, storage
from ardiff.bench.timer import MIN_REPEATS, interleaved
from ardiff.bench.train import train_case
from ardiff.configs import require, sized
from ardiff.data.levels import to_tokens
from ardiff.metrics import held_out
from ardiff.presets import (SCALES, config_dataset, image_config, train_section,
                            validate_image_config)
from ardiff.processes.autoregressive import objectives
from ardiff.report import plots, write_results
from ardiff.train import read_metrics

SMOKE = ["train.steps=4", "train.log_every=1", "ar.width=16", "ar.depth=1",
         "bidirectional_multiples=[1]", "curve_points=2", "eval_examples=16",
         "timing_steps=1"]

KINDS = {"causal": "raster", "bidirectional": "raster_bidirectional"}


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True)
  c.model_cache = "models"  # these runs (with their learning curves) are this experiment's own
  if scale == "small":
    c.ar.width, c.ar.heads = 32, 2
    c.train = train_section(steps=600, batch_size=32, warmup_steps=50, ema_decay=0.99,
                            log_every=25, checkpoint_every=100_000)
  # Larger scales (an accelerator): longer bidirectional runs, and the causal one at 4x too.
  c.causal_multiples = [1] if scale == "small" else [1, 4]
  c.bidirectional_multiples = [1, 4] if scale == "small" else [1, 4, 16]
  c.curve_points = 3  # exact test evaluations per run (the last at the end)
  c.eval_examples = 0 if scale != "mnist" else 500  # test images scored (0: all)
  c.timing_steps = 5  # train steps per timed call (throughput)
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  validate_image_config(c, null_label=False)
  for key in ("causal_multiples", "bidirectional_multiples"):
    require(len(c[key]) >= 1 and all(m > 0 for m in c[key]), key,
            f"must be a non-empty list of positive budget multiples, got {list(c[key])}")
    require(1 in c[key], key, f"must contain 1 (the matched-compute run), got {list(c[key])}")
  require(c.curve_points >= 1, "curve_points", f"must be >= 1, got {c.curve_points}")
  require(c.eval_examples >= 0, "eval_examples", f"must be >= 0 (0: all), got {c.eval_examples}")
  require(c.timing_steps >= 1, "timing_steps", f"must be >= 1, got {c.timing_steps}")


def _train(kind, process, c, workdir, data, steps, evaluate):
  """Train (or restore) one run with exact test evaluations along the way.

  Returns (learning curve [(step, bpd)], wall seconds of training without its evaluations,
  compilation included; None if the run was restored without that record).
  """
  train_cfg = ml_collections.ConfigDict(dict(c.train, steps=int(steps)))
  curve = {"curve_points": c.curve_points, "eval_examples": c.eval_examples}
  eval_seconds = [0.0]

  def eval_fn(params):
    start = time.perf_counter()
    bpd = evaluate(params)
    eval_seconds[0] += time.perf_counter() - start
    return {"test_bpd": bpd}

  eval_every = -(-int(steps) // c.curve_points)  # ceil: the last evaluation at the end
  start = time.perf_counter()
  directory = model_cache.fit_model(
      kind, c, workdir, data, c.ar, train_cfg, process=process, name=f"{data.name}-{kind}-curve",
      key_after_train=(curve,), keep_steps=True,
      train_kwargs=dict(eval_fn=eval_fn, eval_every=eval_every)).directory
  timing_path = os.path.join(directory, "timing.json")
  if (eval_seconds[0] > 0 and experiment_helpers.is_chief()
      and not storage.exists(timing_path)):  # trained here, not restored
    storage.write_atomic(timing_path, json.dumps(
        {"train_seconds": time.perf_counter() - start - eval_seconds[0],
         "eval_seconds": eval_seconds[0]}))
  wall = None
  if storage.exists(timing_path):
    wall = json.loads(storage.read_text(timing_path))["train_seconds"]
  points = {int(r["step"]): float(r["eval/test_bpd"]) for r in read_metrics(directory)
            if "eval/test_bpd" in r}
  return sorted(points.items()), wall


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  L = data.num_tokens
  x_train, y_train = to_tokens(data.x_train), data.y_train
  n_eval = c.eval_examples or len(data.x_test)
  x_test, y_test = to_tokens(data.x_test)[:n_eval], data.y_test[:n_eval]
  processes = {name: build.build(kind, c.ar, data, c.dtype) for name, kind in KINDS.items()}
  batch = c.train.batch_size
  cases = {name: train_case(name, p, x_train, y_train, batch, c.timing_steps)
           for name, p in processes.items()}
  timings = interleaved({name: case.fn for name, case in cases.items()}, MIN_REPEATS)
  flops = {name: case.flops for name, case in cases.items()}
  require(all(flops.values()), "dtype", "this backend gives no FLOP count (XLA cost analysis)")
  rate = {name: c.timing_steps / timings[name].median for name in cases}  # steps/s
  budget = c.train.steps * flops["causal"]

  raster_fn = jax.jit(lambda p, x, y: objectives.raster_nll(
      processes["causal"].model.apply(p, x, y), x))

  def evaluate_causal(params):
    return float(objectives.nats_to_bpd(np.asarray(raster_fn(params, x_test, y_test)).mean(), L))

  def evaluate_bidirectional(params):
    return held_out.test_bpd(processes["bidirectional"], params, x_test, y_test,
                             jax.random.key(0), batch_size=512)

  evaluate = {"causal": evaluate_causal, "bidirectional": evaluate_bidirectional}
  multiples = {"causal": c.causal_multiples, "bidirectional": c.bidirectional_multiples}
  rows, curve_rows, by_flops, by_seconds = [], [], [], []
  for name in KINDS:
    gen_per_example = L if name == "causal" else 1
    for m in multiples[name]:
      steps = max(1, int(round(m * budget / flops[name])))
      label = f"{name}, {m:g}x budget"
      curve, wall = _train(KINDS[name], processes[name], c, workdir, data, steps,
                           evaluate[name])
      per_step = flops[name]
      rows.append({
          "model": label, "steps": steps, "GFLOP/step": per_step / 1e9,
          "train TFLOP": steps * per_step / 1e12, "test_bpd": curve[-1][1],
          "best_test_bpd": min(b for _, b in curve),
          "train seconds": wall if wall is not None else float("nan"),
          "steps/s": rate[name], "examples/s": rate[name] * batch,
          "gen steps trained/s": rate[name] * batch * gen_per_example})
      for step, bpd in curve:
        curve_rows.append({"model": label, "step": step, "train TFLOP": step * per_step / 1e12,
                           "train seconds (est.)": step / rate[name], "test_bpd": bpd})
      by_flops.append((label, [s * per_step for s, _ in curve], [b for _, b in curve]))
      by_seconds.append((label, [s / rate[name] for s, _ in curve], [b for _, b in curve]))

  causal = next(r for r in rows if r["model"] == "causal, 1x budget")
  matched = next(r for r in rows if r["model"] == "bidirectional, 1x budget")
  styles = {}  # one hue per model (darker for larger budgets), dashed bidirectional
  for name, colors, ls in (("causal", ("#6baed6", "#2171b5", "#08306b"), "-"),
                           ("bidirectional", ("#fdae6b", "#e6550d", "#7f2704"), "--")):
    for i, m in enumerate(sorted(multiples[name])):
      styles[f"{name}, {m:g}x budget"] = {"color": colors[min(i, 2)], "ls": ls}
  plots.line_plot(by_flops, os.path.join(workdir, "bpp_vs_flops.png"),
                  xlabel="training FLOPs (XLA cost of the compiled train step x steps)",
                  ylabel="exact test NLL (bits per pixel)", logx=True,
                  hlines=[("causal, end of the 1x budget", causal["test_bpd"])],
                  title="Raster order: causal vs bidirectional predictor", styles=styles,
                  close=True)
  plots.line_plot(by_seconds, os.path.join(workdir, "bpp_vs_seconds.png"),
                  xlabel="training seconds (steps / measured steps per second)",
                  ylabel="exact test NLL (bits per pixel)", logx=True,
                  hlines=[("causal, end of the 1x budget", causal["test_bpd"])],
                  title="Raster order: learning curves against wall time", styles=styles,
                  close=True)

  best_bidir = min((r for r in rows if r["model"].startswith("bidirectional")),
                   key=lambda r: r["best_test_bpd"])
  notes = (
      f"{data.description}. Both transformers: width {c.ar.width}, depth {c.ar.depth}, heads "
      f"{c.ar.heads}, dropout {c.ar.dropout}; batch {batch}, lr {c.train.learning_rate}, EMA "
      f"{c.train.ema_decay}. FLOP budget B = {c.train.steps} causal steps x "
      f"{flops['causal'] / 1e9:.3g} GFLOP = {budget / 1e12:.3g} TFLOP; a run at m x B trains "
      "round(m B / its GFLOP per step) steps (its own cosine schedule). test_bpd: exact NLL of "
      f"the EMA parameters on {n_eval} test images given their labels, at the end; best_test_bpd: the lowest of "
      f"the {c.curve_points} points on its curve (curves.md). steps/s: the compiled train "
      f"step timed alone, both models interleaved ({MIN_REPEATS} calls of {c.timing_steps} "
      "steps, median; a shared CPU: noisy); gen steps trained/s = examples/s x L (causal) or x 1 (bidirectional). train seconds: the "
      "run's wall time without its evaluations, compilation included. "
      f"Measured: at matched compute the causal model reaches {causal['test_bpd']:.3f} bpp, "
      f"the bidirectional one {matched['test_bpd']:.3f}; the best bidirectional run "
      f"({best_bidir['model']}) reaches {best_bidir['best_test_bpd']:.3f}. Generation steps "
      f"trained per second, causal / bidirectional: "
      f"{causal['gen steps trained/s'] / matched['gen steps trained/s']:.3g}.")
  write_results(workdir, rows, "Causal vs bidirectional predictor, raster order, matched FLOPs",
                notes)
  write_results(workdir, curve_rows, "Learning curves (exact test bits per pixel)",
                "One row per evaluation; train seconds estimated as step / measured steps/s.",
                name="curves")
  return rows
