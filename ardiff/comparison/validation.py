"""The comparison's config keys checked, each error naming its key (`configs.require`)."""

from __future__ import annotations

from ardiff import experiment_helpers
from ardiff.comparison.families import build_process, chosen
from ardiff.configs import require
from ardiff.train import TrainConfig


def _number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate_comparison(c, families, data) -> None:
  """families, training seeds, sampling, the budget, learning rates, and every family's
  `sample.runs` and `compute_specs` against the process it builds on `data` (a data spec)."""
  names = [f.name for f in families]
  require(len(c.families) >= 1 and set(c.families) <= set(names)
          and len(set(c.families)) == len(c.families), "families",
          f"must be distinct names out of {names}, got {list(c.families)}")
  require(len(c.training_seeds) >= 1, "training_seeds", "needs at least one training seed")
  require(len(set(c.training_seeds)) == len(c.training_seeds), "training_seeds",
          f"must be distinct, got {list(c.training_seeds)}")
  require(c.num_samples >= 5, "num_samples", "must be >= 5 (k-NN precision/recall, k=3)")
  require(isinstance(c.test_bits_examples, int) and c.test_bits_examples >= 0,
          "test_bits_examples", f"must be an integer >= 0 (0: the whole test split), got "
          f"{c.test_bits_examples!r}")
  require(c.sample_batch >= 0, "sample_batch", f"must be >= 0 (0: all at once), got "
          f"{c.sample_batch}")
  require(c.budget_reference in names, "budget_reference",
          f"must be one of {names}, got {c.budget_reference!r}")
  require(isinstance(c.budget_steps, int) and c.budget_steps >= 1, "budget_steps",
          f"must be an integer >= 1, got {c.budget_steps!r}")
  require(_number(c.budget_tflop) and c.budget_tflop >= 0, "budget_tflop",
          f"must be a number >= 0 (0: budget_steps of budget_reference), got {c.budget_tflop!r}")
  require(isinstance(c.cache_samples, bool), "cache_samples",
          f"must be True or False, got {c.cache_samples!r}")
  for name, lr in c.learning_rates.items():
    require(name in names, f"learning_rates.{name}", f"not a family; families are {names}")
    require(_number(lr) and lr > 0, f"learning_rates.{name}",
            f"must be a positive number, got {lr!r}")
  for prefix, specs in (("sample.runs", c.sample.runs), ("compute_specs", c.compute_specs)):
    require(set(specs) == set(names), prefix, f"needs spec lists for {names}")
  for family in chosen(families, c.families):
    process = build_process(c, family, data)
    for prefix, specs in (("sample.runs", c.sample.runs), ("compute_specs", c.compute_specs)):
      experiment_helpers.check_specs(process, specs[family.name], f"{prefix}.{family.name}")
  TrainConfig.from_config(c.train)  # budget and validation keys, named on error
