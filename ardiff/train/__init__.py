"""The training loop every process shares: data-parallel jit, AdamW, EMA, orbax checkpoints.

One job per module:
  config      `TrainConfig`, and for each field whether it enters the model key, the compile
              key or neither;
  step        the pure train step: state, optimiser, EMA, gradient accumulation, the
              divergence guard;
  programs    the compiled programs (cached across calls), FLOPs per step, steps per call;
  preemption  SIGTERM and Ctrl-C: save and stop, agreed across hosts;
  records     `training.json` and `metrics.jsonl` (and the one reader of it);
  best        validation, the best EMA parameters, budget snapshots;
  actions     what the loop does between steps: log, validate, evaluate, preview, snapshot,
              checkpoint;
  loop        `train`: set up or resume, then step and run the due actions.

A run lives in a work dir: `checkpoints/` (orbax, atomic, keep N), `metrics.jsonl`,
`training.json` (the budget, the stopping step and the best validation loss). Calling `train`
again on the same dir resumes from the latest checkpoint; batches are a function of
(seed, step) alone, so an interrupted-and-resumed run equals an uninterrupted one. SIGTERM
(preemptible TPUs send it) and Ctrl-C (SIGINT) save a checkpoint at the next step and stop
cleanly (`Preempted`, `Interrupted`; a second Ctrl-C stops at once, as usual). On a multi-host
job a signal to any one host stops every host at one agreed step (`preemption.SignalStop`).

What a run writes and says: process 0 alone prints (`ardiff.console`: plain lines, plus a
progress bar with ETA on a terminal), appends to `metrics.jsonl` and writes TensorBoard event
files to `tensorboard/` (`ardiff.summaries`: every logged metric, the learning rate, steps/s,
validation and eval metrics, sample grids every `preview_every` steps, the config as hparams).

Nothing lost, nothing silent:
  lock          one process trains in a directory at a time (`ardiff.workdir`: a second one
                stops at once naming the holder's pid and host);
  divergence    the first non-finite step stops the run with `TrainingDiverged` before anything
                is written (`step`): a non-finite state is never saved, the last good checkpoint
                stays the latest. Detection lags by up to `log_every` steps of wasted compute,
                never by a save;
  checkpoints   verified by a sha256 manifest; a damaged latest step falls back to the previous
                one (`ardiff.checkpoints`), for `checkpoints/` and `best/` alike;
  metrics       `metrics.jsonl` is cut back to the restored step on resume (rows of steps the
                checkpoint does not hold would otherwise appear twice);
  full disk     a write that fails for want of space (a checkpoint, a metrics row, TensorBoard)
                stops the run with `DiskFull`: one line naming the disk and the last intact
                checkpoint, which the rerun resumes from (orbax's per-write tracebacks are
                dropped, `ardiff.console.held_logs`);
  other model   a checkpoint whose shapes are not this model's stops the run with
                `CheckpointMismatch` and is left where it is (`ardiff.checkpoints`).

Extending a run: `train.steps` is not part of a model's cache key (`ardiff.model_cache.train_key`),
so rerunning with more steps resumes from the saved step. The warmup-cosine learning rate
depends on `steps`: from the resumed step on, the extended run follows the schedule of the new
budget (its rate jumps up where the old schedule had decayed further), so an extended run is
close to, not equal to, a run trained to the new budget from the start. A run that stopped
early (`patience`) stays stopped. Fewer steps than a run has done returns it as it is.

Budgets and convergence (`TrainConfig`; validation, patience and snapshots: `best`):
  flops         a budget in FLOPs instead of steps: steps = floor(flops / F), with F the FLOPs
                of one train step as XLA counts them (cost analysis of the lowered step: the
                forward and backward pass, optimiser and EMA update), so models of different
                cost get the same compute, not the same number of steps.
"""

from ardiff.train.best import snapshot_params, validation_split
from ardiff.train.config import TrainConfig, compile_key, later_field_defaults, outside_model_key
from ardiff.train.loop import train
from ardiff.train.preemption import Interrupted, Preempted
from ardiff.train.programs import step_flops, steps_in_call, train_step_flops
from ardiff.train.records import TRAINING_INFO, read_metrics, read_training_info
from ardiff.train.step import (Divergence, TrainState, ema_decay_at, guarded_train_step,
                               guarded_train_steps, init_state, learning_rate_schedule,
                               make_optimizer, num_params, train_step)

__all__ = ["Divergence", "Interrupted", "Preempted", "TRAINING_INFO", "TrainConfig", "TrainState",
           "compile_key", "ema_decay_at", "guarded_train_step", "guarded_train_steps",
           "init_state", "later_field_defaults", "learning_rate_schedule", "make_optimizer",
           "num_params", "outside_model_key", "read_metrics", "read_training_info",
           "snapshot_params", "step_flops", "steps_in_call", "train", "train_step",
           "train_step_flops", "validation_split"]
