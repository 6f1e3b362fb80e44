"""`train`: set a run up (or resume it), then step through it, running the periodic actions
(`ardiff.train.actions`) between calls of the compiled step."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ardiff import checkpoints, console, parallel, storage
from ardiff import summaries as summaries_lib
from ardiff.configs.validation import ConfigError
from ardiff.data.base import batch_indices
from ardiff.errors import DiskFull, TrainingDiverged
from ardiff.processes.base import Process
from ardiff.train import actions, best as best_lib, records
from ardiff.train.config import TrainConfig
from ardiff.train.preemption import SignalStop, raise_if_stopped
from ardiff.train.programs import ProgramCache, plain_step_flops, state_target, steps_in_call
from ardiff.train.step import (Divergence, TrainState, divergence_message, learning_rate_schedule,
                               num_params)
from ardiff.workdir import workdir_lock

# Compiled programs of the last few (process, config, mesh) triples, kept across calls of
# `train` in one Python process, so that resuming or training several seeds compiles once.
PROGRAMS = ProgramCache(kept=4)


def train(
    process: Process,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    workdir: str | os.PathLike,
    *,
    stop_at: int | None = None,
    log: Callable[[str], None] | None = None,
    eval_fn: Callable[[Any], dict[str, float]] | None = None,
    eval_every: int | None = None,
    preview_fn: Callable[[Any], np.ndarray] | None = None,
    mesh=None,
) -> TrainState:
  """Train (or resume, or just restore a finished run) and return the final state.

  x, y: the full training arrays in host memory (model inputs, e.g. tokens or [-1,1] floats);
  with `cfg.val_examples` the last ones are held out for validation.
  stop_at: stop early at this step (still saving a checkpoint), e.g. to test resumption.
  eval_fn(ema_params) -> metrics, run every `eval_every` steps and at the end.
  preview_fn(ema_params) -> images [N, H, W(, C)], drawn every `cfg.preview_every` steps and at
  the end into TensorBoard (every process calls it: sampling may be a collective).
  log: where progress lines go (default `ardiff.console.log`: stderr, process 0 only).
  Beside metrics.jsonl, process 0 writes TensorBoard event files to `workdir/tensorboard`
  (`ardiff.summaries`): the metrics' scalars, the learning rate, the config as hparams.
  With validation, the returned state's `ema_params` are the best EMA parameters (lowest
  validation loss) and its `step` the step training stopped at; `training.json` records both.
  Raises WorkdirLocked (another process trains in `workdir`), TrainingDiverged, CheckpointDamaged
  (no intact checkpoint to resume from), CheckpointMismatch (another model's checkpoint),
  DiskFull, Preempted (SIGTERM) and Interrupted (Ctrl-C).
  """
  workdir = os.fspath(workdir)
  with workdir_lock(workdir, "training", take=console.is_chief()):
    try:
      # What native code prints in the run (TensorStore's late completions of a failed
      # checkpoint write) is held: printed at its end, dropped after a full disk.
      with console.held_logs(drop=storage.is_disk_full):
        return _train(process, x, y, cfg, workdir, stop_at=stop_at, log=log or console.log,
                      eval_fn=eval_fn, eval_every=eval_every, preview_fn=preview_fn, mesh=mesh)
    except Exception as e:  # noqa: BLE001 - a full disk is told apart below, the rest passes
      if not storage.is_disk_full(e):
        raise
    # Outside the handler the writer's error is let go, and with it orbax's failed write tasks:
    # collected here, their "Task exception was never retrieved" logs (one traceback per
    # array) are dropped instead of printed at exit, below the one line that says it all.
    with console.held_logs("asyncio", drop=lambda error: True):
      gc.collect()
  raise DiskFull(disk_full_message(workdir))


def disk_full_message(workdir: str) -> str:
  """What a run stopped by a full disk says: the disk, and the checkpoint a rerun resumes."""
  directory = storage.join(workdir, "checkpoints")
  step = checkpoints.last_intact_step(directory)
  kept = (f"the last intact checkpoint, step {step} in {directory}, is kept" if step is not None
          else "no checkpoint was saved yet")
  return (f"no space left on the disk at {storage.mount_point(workdir)} while writing "
          f"{workdir}: {kept}; free space and rerun the same command to resume")


def _check_batch(cfg: TrainConfig, x, y, mesh) -> None:
  parallel.check_batch_split(cfg.batch_size, mesh.devices.size, jax.process_count(),
                             cfg.grad_accum)
  if len(x) != len(y):
    raise ValueError(f"x has {len(x)} examples but y has {len(y)}")


def _budget(cfg: TrainConfig, flops: float | None) -> TrainConfig:
  """`cfg` with its steps derived from a FLOP budget (`train.flops`), if it has one."""
  if cfg.flops <= 0:
    return cfg
  if not flops:
    raise ConfigError("config key 'train.flops': this backend gives no FLOP count for the "
                      "train step; give the budget in train.steps")
  # (1 + 1e-9): a budget of exactly n steps' FLOPs is n steps despite rounding.
  return dataclasses.replace(cfg, steps=max(1, int(cfg.flops / flops * (1 + 1e-9))))


def _managers(stack, workdir: str, cfg: TrainConfig, snapshot_steps):
  """The orbax managers of `checkpoints/`, `best/` (with validation) and `snapshots/` (with
  snapshot steps; None where not needed)."""
  absdir = storage.absolute(workdir)

  def manager(name, **options):
    return stack.enter_context(ocp.CheckpointManager(
        storage.join(absdir, name), options=ocp.CheckpointManagerOptions(create=True, **options)))

  return (manager("checkpoints", max_to_keep=cfg.keep_checkpoints),
          manager("best", max_to_keep=1) if cfg.validates else None,
          manager("snapshots") if snapshot_steps else None)


def _train(process, x, y, cfg, workdir, *, stop_at, log, eval_fn, eval_every, preview_fn, mesh):
  storage.makedirs(workdir)
  mesh = mesh or parallel.data_mesh()
  _check_batch(cfg, x, y, mesh)
  validate = None
  if cfg.validates:
    x, y, x_val, y_val = best_lib.validation_split(x, y, cfg.val_examples)
    validate = best_lib.validation_loss_fn(process, x_val, y_val, cfg.batch_size, cfg.seed, mesh)
  repl = parallel.replicated(mesh)
  init_key, loop_key = jax.random.split(jax.random.key(cfg.seed))
  chief = console.is_chief()

  def global_batch(step: int):
    idx = parallel.process_slice(batch_indices(cfg.seed, step, cfg.batch_size, len(x)))
    return parallel.put_global_batch({"x": x[idx], "y": y[idx]}, mesh)

  def global_batches(step: int, n: int):
    """The batches of steps step..step+n-1 stacked [n, B, ...] (each as `global_batch`)."""
    idx = np.stack([parallel.process_slice(batch_indices(cfg.seed, s, cfg.batch_size, len(x)))
                    for s in range(step, step + n)])
    return parallel.put_stacked_batches({"x": x[idx], "y": y[idx]}, mesh)

  example_batch = global_batch(0)
  target = state_target(process, cfg, example_batch, init_key, mesh)
  flops = plain_step_flops(process, cfg, target, example_batch, loop_key, mesh)
  cfg = _budget(cfg, flops)
  step_fn, init_fn, scan_fn = PROGRAMS.get(process, cfg, mesh)
  info = records.TrainingInfo(workdir, chief)
  previous_steps = info.values.get("steps")
  info.values.update(flops_per_step=flops, steps=cfg.steps, batch_size=cfg.batch_size,
                     train_examples=len(x), val_examples=cfg.val_examples)
  snapshot_steps = best_lib.snapshot_steps(cfg)
  with contextlib.ExitStack() as stack:
    manager, best_manager, snapshot_manager = _managers(stack, workdir, cfg, snapshot_steps)
    state, latest = checkpoints.restore_latest(manager, target, log, move=chief)
    if latest is not None:
      log(f"resumed from step {latest} in {workdir}")
    else:
      state = init_fn(example_batch, init_key)
      log(f"initialised {num_params(state.params):,} parameters")
    start = int(state.step)
    dropped = records.truncate_metrics(workdir, start) if chief else 0
    if dropped:
      log(f"{storage.join(workdir, records.METRICS)}: dropped {dropped} row(s) past step "
          f"{start}, the restored step")
    summaries = stack.enter_context(summaries_lib.Summaries(
        storage.join(workdir, summaries_lib.SUBDIR), purge_step=start, enabled=chief))
    summaries.hparams({**dataclasses.asdict(cfg), "flops_per_step": flops or 0.0,
                       "num_params": num_params(state.params)})
    if start and previous_steps is not None and previous_steps != cfg.steps:
      log(f"train.steps is now {cfg.steps} (was {previous_steps}) for the run at step {start}"
          + (": it is past that, kept as it is" if start > cfg.steps else
             ": extending it; from here the learning rate follows the new budget's schedule"))
    info.values["steps"] = max(cfg.steps, start)
    best = None
    if best_manager is not None:
      best = best_lib.BestEMA(best_manager, validate, target.ema_params, info.values,
                              chief=chief, log=log)
      best.resume(start, state.ema_params)

    end = min(cfg.steps, stop_at) if stop_at is not None else cfg.steps
    stopped_at = info.values.get("stopped_early_at")
    if stopped_at is not None and start >= stopped_at:
      end = start  # converged earlier: nothing left to train
    validation = actions.validation(cfg, best, snapshot_steps) if best is not None else None
    checkpoint = actions.checkpointing(cfg, end, manager, info, summaries, chief)
    # The actions that read the state after a call, in the order they fill the metrics row;
    # checkpointing comes after the row is written (and also runs at a stop).
    observers = [
        actions.metrics_log(cfg, start, end, learning_rate_schedule(cfg), log), validation,
        eval_every and eval_fn and actions.evaluation(eval_fn, eval_every, cfg, log),
        cfg.preview_every and preview_fn and actions.preview(preview_fn, cfg, end, summaries),
        snapshot_steps and actions.snapshots(snapshot_steps, snapshot_manager, best, chief)]
    observers = [a for a in observers if a]
    periods = [a.every for a in [*observers, checkpoint]]
    marks = sorted(set().union(*(a.at for a in [*observers, checkpoint])))
    info.start_clock()
    divergence = jax.device_put(Divergence.none(), repl)

    def stop_if_diverged():
      seen = jax.device_get(divergence)
      if int(seen.step):
        raise TrainingDiverged(divergence_message(seen, cfg, x, manager.latest_step(),
                                                  os.fspath(manager.directory)))

    with (SignalStop(coordinated=jax.process_count() > 1) as signals,
          console.progress(end, start) as bar):
      step = start
      while step < end:
        n = steps_in_call(step, end, cfg.steps_per_call, periods, marks)
        if n == 1:
          state, divergence, metrics = step_fn(state, divergence, global_batch(step),
                                               jax.random.fold_in(loop_key, step))
        else:
          keys = jax.vmap(lambda s: jax.random.fold_in(loop_key, s))(
              jnp.arange(step, step + n))
          state, divergence, metrics = scan_fn(state, divergence, global_batches(step, n),
                                               keys)
          metrics = jax.tree.map(lambda m: m[-1], metrics)  # the call's last step's
        done = step + n
        bar.update(n)
        due = [a for a in observers if a.due(done)]
        if due or checkpoint.due(done):  # the guard's one host sync, before anything is written
          stop_if_diverged()
        row = {"step": done}
        for action in due:
          action.run(done, state, metrics, row)
        if len(row) > 1:
          summaries.scalars(done, {k: v for k, v in row.items() if k != "step"})
          if chief:
            records.append_metrics(workdir, row)
        stopped_early = any(a is validation for a in due) and best.patience_ran_out(done, cfg)
        if stopped_early:
          info.values["stopped_early_at"] = done
          log(f"early stop at step {done}: no better validation loss for {cfg.patience} "
              f"evaluations; best at step {best.step}")
        # Read once: a later signal is the next call's. Every step of the call is polled (the
        # multi-host sync point may fall inside it; all hosts then stop at its end).
        requested = 0
        for s in range(step + 1, done + 1):
          requested = requested or signals.poll(s)
        if checkpoint.due(done) or stopped_early or requested:
          if not due and not checkpoint.due(done):
            stop_if_diverged()
          checkpoint.run(done, state, metrics, row)
        if requested or stopped_early:
          break
        step = done
    for m in (manager, best_manager, snapshot_manager):
      if m is not None:
        m.wait_until_finished()
    if best is not None and best.step is not None:
      state = state.replace(ema_params=best.params())
  raise_if_stopped(signals.requested, int(state.step), workdir)
  return state
