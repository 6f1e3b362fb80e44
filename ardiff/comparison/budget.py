"""One training budget in FLOPs for every family, and every family x seed trained at it.

A family whose train step costs F FLOPs (XLA's count) gets budget / F steps, so families are
compared at equal training compute, not equal steps. The budget is `budget_tflop` x 1e12 if
> 0, else `budget_steps` x F of the `budget_reference` family.
"""

from __future__ import annotations

import ml_collections

from ardiff import model_cache
from ardiff.comparison.families import Family, extras, model_section
from ardiff.train import TrainConfig, train_step_flops


def flop_budget(c, data, processes: dict) -> tuple[float, dict]:
  """(the FLOP budget, {family name: FLOPs per train step}) for the built `processes`."""
  train_cfg = TrainConfig.from_config(c.train)
  per_step = {name: train_step_flops(process, model_cache.model_inputs(process, data),
                                     data.y_train, train_cfg)
              for name, process in processes.items()}
  if c.budget_tflop:
    return float(c.budget_tflop) * 1e12, per_step
  return c.budget_steps * per_step[c.budget_reference], per_step


def learning_rate(c, family: Family) -> float:
  """The family's own rate (`learning_rates`) or the train section's."""
  return c.learning_rates.get(family.name, c.train.learning_rate)


def train_all(c, workdir, data, families, budget: float, processes: dict) -> dict:
  """{family name: [TrainedModel per training seed]}, all at the same FLOP budget."""
  out = {}
  for family in families:
    out[family.name] = []
    for seed in c.training_seeds:
      train_cfg = ml_collections.ConfigDict(dict(
          c.train.to_dict(), seed=int(seed), flops=float(budget),
          learning_rate=float(learning_rate(c, family))))
      out[family.name].append(model_cache.fit_model(
          family.kind, c, workdir, data, model_section(c, family), train_cfg,
          name=f"{data.name}-{family.kind}-s{seed}", process=processes[family.name],
          **extras(c, family)))
  return out
