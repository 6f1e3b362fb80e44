"""Validation, the best EMA parameters and budget snapshots.

  val_examples  the last N examples of the training arrays are held out (never trained on);
  eval_every    the EMA parameters' loss on them (common random numbers: the same keys every
                evaluation, so evaluations differ only by the parameters) every N steps;
  patience      stop after this many evaluations without a new best; the best EMA parameters
                are kept in `best/` and returned, the step they were reached at recorded;
  snapshots     fractions of the budget at which the best EMA so far (the current EMA without
                validation) is kept in `snapshots/<step>`: one run gives the models of smaller
                budgets for a quality-against-compute curve. Caveat: a snapshot shares the
                learning-rate schedule of the full budget (it is not a run that decayed to its
                own budget), which favours the full budget slightly.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from ardiff import checkpoints, parallel, storage
from ardiff.configs.validation import ConfigError
from ardiff.processes.base import Process
from ardiff.train.config import TrainConfig


def validation_split(x: np.ndarray, y: np.ndarray, n_val: int):
  """(x_train, y_train, x_val, y_val): the last n_val examples held out."""
  if n_val >= len(x):
    raise ConfigError(f"config key 'train.val_examples': {n_val} held out of {len(x)} training "
                      "examples leaves none to train on")
  return x[:len(x) - n_val], y[:len(y) - n_val], x[len(x) - n_val:], y[len(y) - n_val:]


def validation_loss_fn(process: Process, x_val, y_val, batch_size: int, seed: int, mesh):
  """ema_params -> mean validation loss and metrics over fixed batches and fixed keys.

  Passes over the held-out set (each with its own fixed key) until ~1024 loss samples are
  drawn: the diffusion and ARDM losses sample a time / an order per example, and the same keys
  at every evaluation make successive evaluations differ only through the parameters.
  """
  n = len(x_val)
  per_pass = -(-n // batch_size)
  passes = max(1, -(-1024 // (per_pass * batch_size)))
  repl = parallel.replicated(mesh)
  batches = []
  for b in range(per_pass):
    idx = parallel.process_slice(np.arange(b * batch_size, (b + 1) * batch_size) % n)
    batches.append(parallel.put_global_batch({"x": x_val[idx], "y": y_val[idx]}, mesh))
  keys = [jax.random.fold_in(jax.random.key(seed), 1_000_003 + i)
          for i in range(passes * per_pass)]
  loss_fn = jax.jit(lambda p, b, k: process.loss(p, b, k, train=False),
                    in_shardings=(repl, parallel.batch_sharding(mesh), repl))

  def evaluate(ema_params) -> dict[str, float]:
    totals: dict[str, float] = {}
    for i, key in enumerate(keys):
      loss, metrics = loss_fn(ema_params, batches[i % per_pass], key)
      for k, v in {"loss": loss, **metrics}.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    return {k: v / len(keys) for k, v in totals.items()}

  return evaluate

class BestEMA:
  """The EMA parameters with the lowest finite validation loss so far, kept in `manager` (one
  checkpoint, `best/`) and recorded in `info` (`training.json`: best_step, best_val).
  `validate(ema_params)` gives the loss and metrics; `target` the EMA's shapes."""

  def __init__(self, manager, validate: Callable[[Any], dict[str, float]], target, info: dict,
               *, chief: bool, log: Callable[[str], None]):
    self.manager, self.validate, self.target, self.info = manager, validate, target, info
    self.chief, self.log = chief, log
    self.step = self.loss = None

  def resume(self, start: int, ema_params) -> None:
    """Restore the best so far; if it was lost, the EMA of the restored step `start` takes its
    place (when finite)."""
    had_best = bool(self.manager.all_steps())
    best_params, self.step = checkpoints.restore_latest(self.manager, self.target, self.log,
                                                        move=self.chief, required=False)
    if self.step is not None:
      self.loss = self.info.get("best_val")
      if self.loss is None or self.info.get("best_step") != self.step:
        self.loss = self.validate(best_params)["loss"]
    elif had_best:
      self.info.pop("best_step", None)
      self.info.pop("best_val", None)
      self.log(f"the best EMA parameters in {self.manager.directory} are lost"
               + (f"; the EMA of step {start} is the best so far" if start else ""))
      if start:
        self.loss = self.validate(ema_params)["loss"]
        if np.isfinite(self.loss):
          self._keep(start, ema_params)
        else:
          self.loss = None

  def _keep(self, step: int, ema_params) -> None:
    self.step = step
    checkpoints.save(self.manager, step, ema_params, chief=self.chief)
    self.info.update(best_step=self.step, best_val=self.loss)

  def update(self, step: int, ema_params) -> dict[str, float]:
    """Validate the EMA of `step`, keep it if it is the best, say so; the loss and metrics."""
    evals = self.validate(ema_params)
    if not np.isfinite(evals["loss"]):
      pass  # never a best (the parameters are finite: the held-out data may not be)
    elif self.loss is None or evals["loss"] < self.loss:
      self.loss = evals["loss"]
      self._keep(step, ema_params)
    best = (f"best {self.loss:.4f} at step {self.step}" if self.step is not None
            else "no finite best yet")
    self.log(f"step {step} validation loss {evals['loss']:.4f} ({best})")
    return evals

  def patience_ran_out(self, step: int, cfg: TrainConfig) -> bool:
    return bool(cfg.patience) and step - (self.step or 0) >= cfg.patience * cfg.eval_every

  def params(self):
    """The best EMA parameters (None: no finite best yet)."""
    if self.step is None:
      return None
    return checkpoints.restore(self.manager, self.step, self.target)


def snapshot_steps(cfg: TrainConfig) -> list[int]:
  """The steps the fractions `cfg.snapshots` of the budget fall on."""
  return sorted({max(1, round(f * cfg.steps)) for f in cfg.snapshots})


def snapshot_params(workdir: str | os.PathLike, target=None) -> dict[int, Any]:
  """{step: EMA parameters} kept at the budget fractions `TrainConfig.snapshots` (verified:
  CheckpointDamaged names a damaged one)."""
  path = storage.join(storage.absolute(workdir), "snapshots")
  if not storage.isdir(path):
    return {}
  with ocp.CheckpointManager(path) as manager:
    return {int(s): checkpoints.restore(manager, s, target) for s in manager.all_steps()}
