"""What the training loop does between steps, each as a `Periodic` action: logging,
validation, held-out evaluation, sample previews and snapshots (checkpoints are one too).

An action is due every `every` steps (0: none) and at the steps `at`. The loop runs the due
ones after a call of steps, and cuts calls of several steps (`train.steps_per_call`) at the
steps where one is due (`ardiff.train.programs.steps_in_call` reads `every` and `at`), so
metrics, checkpoints and preemption behave as with one step per call.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import numpy as np

from ardiff import checkpoints
from ardiff.train.best import BestEMA
from ardiff.train.config import TrainConfig

# run(step, state, metrics of the call's last step, the step's metrics row to add to)
Run = Callable[[int, Any, Any, dict], None]


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: actions compare by identity
class Periodic:
  every: int
  at: frozenset[int]
  run: Run

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0 or step in self.at


def metrics_log(cfg: TrainConfig, start: int, end: int, schedule, log) -> Periodic:
  """The train metrics, steps/s and learning rate every `log_every` steps and at the end."""
  clock = {"time": time.perf_counter(), "step": start}  # since the last line

  def run(step, state, metrics, row):
    del state
    metrics = jax.device_get(metrics)
    now = time.perf_counter()
    rate = (step - clock["step"]) / max(now - clock["time"], 1e-9)
    clock.update(time=now, step=step)
    row.update({k: float(v) for k, v in metrics.items()}, steps_per_sec=rate,
               learning_rate=float(schedule(step - 1)))
    log(f"step {step}/{cfg.steps}  loss {row['loss']:.4f}  {rate:.1f} steps/s  "
        f"ETA {format_seconds((cfg.steps - step) / max(rate, 1e-9))}")

  return Periodic(cfg.log_every, frozenset({end}), run)


def validation(cfg: TrainConfig, best: BestEMA, snapshot_steps) -> Periodic:
  """The EMA's held-out loss every `eval_every` steps, at the budget and at every snapshot (the
  best so far is what a snapshot keeps)."""

  def run(step, state, metrics, row):
    del metrics
    evals = best.update(step, state.ema_params)
    row.update({f"val/{k}": v for k, v in evals.items()})

  return Periodic(cfg.eval_every, frozenset({cfg.steps, *snapshot_steps}), run)


def evaluation(eval_fn: Callable[[Any], dict], every: int, cfg: TrainConfig, log) -> Periodic:
  """The caller's `eval_fn(ema_params) -> metrics` every `every` steps and at the budget."""

  def run(step, state, metrics, row):
    del metrics
    evals = {f"eval/{k}": float(v) for k, v in eval_fn(state.ema_params).items()}
    row.update(evals)
    log(f"step {step} eval " + "  ".join(f"{k} {v:.4f}" for k, v in evals.items()))

  return Periodic(every, frozenset({cfg.steps}), run)


def preview(preview_fn: Callable[[Any], Any], cfg: TrainConfig, end: int, summaries) -> Periodic:
  """A grid of the EMA's samples in TensorBoard every `preview_every` steps and at the end."""

  def run(step, state, metrics, row):
    del metrics, row
    summaries.images(step, "samples", np.asarray(preview_fn(state.ema_params)))

  return Periodic(cfg.preview_every, frozenset({end}), run)


def snapshots(steps, manager, best: BestEMA | None, chief: bool) -> Periodic:
  """The best EMA so far (without validation: the current EMA) kept at the snapshot steps."""

  def run(step, state, metrics, row):
    del metrics, row
    kept = best.params() if best is not None else None
    checkpoints.save(manager, step, state.ema_params if kept is None else kept, chief=chief)

  return Periodic(0, frozenset(steps), run)


def checkpointing(cfg: TrainConfig, end: int, manager, info, summaries, chief: bool) -> Periodic:
  """The train state every `checkpoint_every` steps and at the end (and at a stop: the loop
  runs it then too), with `training.json`."""

  def run(step, state, metrics, row):
    del metrics, row
    summaries.flush()
    checkpoints.save(manager, step, state, chief=chief)
    info.values["step"] = step
    info.save()

  return Periodic(cfg.checkpoint_every, frozenset({end}), run)


def format_seconds(s: float) -> str:
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
