"""`TrainConfig`: the training hyperparameters, and for each field which keys it enters.

Two keys are built from a config, and each field says whether it is part of them (its
`dataclasses.field` metadata, read by `outside_model_key` and `compile_key`):
  model key    `ardiff.model_cache.train_key`: the directory a trained model is cached in. A
               field out of it cannot change the parameters at a given step (logging, checkpointing,
               previews, steps per call) or is the budget (`steps`: more steps extend a cached
               run from its last checkpoint, fewer return it as it is);
  compile key  `ardiff.train.programs`: the jitted train step. A field out of it only steers
               the loop around the step (seed, logging, validation, budgets, snapshots), so
               runs that differ in it share one compiled program.
Fields added after models were first cached also name the value that trains as before they
existed (`before`): at that value they are left out of the model key, so older models stay
valid (`later_field_defaults`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ardiff.configs.validation import ConfigError

_NOT_LATER = object()


def _field(default, *, model_key: bool = True, compile_key: bool = True, before=_NOT_LATER):
  """A TrainConfig field: in the model key and the compile key unless told otherwise; `before`
  (fields added later) the value that trains as models cached before the field existed."""
  return dataclasses.field(default=default, metadata=dict(
      model_key=model_key, compile_key=compile_key, before=before))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Plain values (built from the `train` section of an experiment's config)."""

  # The one set of training defaults: configs' train sections are built from these
  # (`ardiff.presets.train_section`).
  steps: int = _field(3000, model_key=False)  # the budget: see the module docstring
  batch_size: int = _field(64)
  learning_rate: float = _field(1e-3)
  warmup_steps: int = _field(200)
  weight_decay: float = _field(0.0)
  grad_clip: float = _field(1.0)
  ema_decay: float = _field(0.999)
  # Warm the EMA up: decay min(ema_decay, (1 + n) / (10 + n)) at update n (see `ema_decay_at`);
  # False: the fixed decay of models trained before the switch existed.
  ema_warmup: bool = _field(True, before=False)
  # Gradient accumulation: each update averages the gradients of grad_accum micro-batches of
  # batch_size / grad_accum examples (the same update with a deterministic loss; activations
  # for one micro-batch at a time). 1: the whole batch in one pass.
  grad_accum: int = _field(1, before=1)
  # The seed draws the initialisation and the batches: a different model, the same program.
  seed: int = _field(0, compile_key=False)
  log_every: int = _field(250, model_key=False, compile_key=False)
  checkpoint_every: int = _field(1000, model_key=False, compile_key=False)
  keep_checkpoints: int = _field(2, model_key=False, compile_key=False)
  # Budgets and convergence (`ardiff.train` docstring). Defaults: a step budget, no validation.
  # In the model key: `eval_every` decides which EMAs compete for the best one, `patience` when
  # training stops, `val_examples` what is trained on; `flops` is a budget compared at matched
  # compute (each its own model); `snapshots` no later run can make up for.
  flops: float = _field(0.0, compile_key=False, before=0.0)  # > 0: `steps` derived from it
  val_examples: int = _field(0, compile_key=False, before=0)
  eval_every: int = _field(0, compile_key=False, before=0)
  patience: int = _field(0, compile_key=False, before=0)
  snapshots: tuple = _field((), compile_key=False, before=())
  # A grid of samples in TensorBoard every N steps (0: none; `ardiff.model_cache.fit_model` draws
  # them with the process's preview spec).
  preview_every: int = _field(0, model_key=False, compile_key=False, before=0)
  # Train steps per jitted call (a lax.scan over them; 1: one call per step). Fewer dispatches
  # from the host, for accelerators where one small step is shorter than its launch; calls
  # are cut at every step where the loop logs, evaluates, saves or may stop, so metrics,
  # checkpoints and preemption behave as with 1. The scan is a program of its own, so the
  # step's program is shared.
  steps_per_call: int = _field(1, model_key=False, compile_key=False, before=1)

  def __post_init__(self):
    positive = ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints")
    for name in positive:
      if getattr(self, name) <= 0:
        raise ConfigError(f"config key 'train.{name}': must be positive, got {getattr(self, name)}")
    if self.learning_rate <= 0:
      raise ConfigError(f"config key 'train.learning_rate': must be positive, got {self.learning_rate}")
    if self.warmup_steps < 0:
      raise ConfigError(f"config key 'train.warmup_steps': must be >= 0, got {self.warmup_steps}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ConfigError(f"config key 'train.ema_decay': must lie in [0, 1), got {self.ema_decay}")
    if not isinstance(self.ema_warmup, bool):
      raise ConfigError(f"config key 'train.ema_warmup': must be true or false, got "
                        f"{self.ema_warmup!r}")
    if (not isinstance(self.grad_accum, int) or isinstance(self.grad_accum, bool)
        or self.grad_accum < 1 or self.batch_size % self.grad_accum):
      raise ConfigError(f"config key 'train.grad_accum': must be a positive integer dividing "
                        f"train.batch_size={self.batch_size}, got {self.grad_accum!r}")
    if self.grad_clip <= 0:
      raise ConfigError(f"config key 'train.grad_clip': must be positive, got {self.grad_clip}")
    if (not isinstance(self.steps_per_call, int) or isinstance(self.steps_per_call, bool)
        or self.steps_per_call < 1):
      raise ConfigError(f"config key 'train.steps_per_call': must be a positive integer, got "
                        f"{self.steps_per_call!r}")
    for name in ("val_examples", "eval_every", "patience", "preview_every"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"config key 'train.{name}': must be an integer >= 0, got {value!r}")
    if self.flops < 0:
      raise ConfigError(f"config key 'train.flops': must be >= 0 (0: budget in steps), got "
                        f"{self.flops}")
    if (self.eval_every > 0) != (self.val_examples > 0):
      raise ConfigError("config key 'train.eval_every': validation needs both eval_every and "
                        f"val_examples > 0, got eval_every={self.eval_every}, "
                        f"val_examples={self.val_examples}")
    if self.patience and not self.eval_every:
      raise ConfigError("config key 'train.patience': early stopping needs validation "
                        "(train.eval_every and train.val_examples > 0)")
    if any(not 0 < f < 1 for f in self.snapshots):
      raise ConfigError(f"config key 'train.snapshots': fractions of the budget in (0, 1), got "
                        f"{list(self.snapshots)}")

  @classmethod
  def from_config(cls, cfg) -> "TrainConfig":
    values = dict(cfg) if not isinstance(cfg, dict) else cfg
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in known}
    if "snapshots" in values:
      values["snapshots"] = tuple(float(f) for f in values["snapshots"])
    return cls(**values)

  @property
  def validates(self) -> bool:
    return self.eval_every > 0


def outside_model_key() -> frozenset[str]:
  """The fields left out of a trained model's cache key (`ardiff.model_cache.train_key`)."""
  return frozenset(f.name for f in dataclasses.fields(TrainConfig)
                   if not f.metadata["model_key"])


def later_field_defaults() -> dict[str, Any]:
  """{field: the value that trains as before it existed} for the fields added after models
  were first cached: left out of the model key at that value."""
  return {f.name: f.metadata["before"] for f in dataclasses.fields(TrainConfig)
          if f.metadata["before"] is not _NOT_LATER}


def compile_key(cfg: TrainConfig) -> tuple:
  """The fields the compiled train step depends on, as ((name, value), ...): configs that differ
  only elsewhere share one program."""
  return tuple((f.name, getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
               if f.metadata["compile_key"])
