"""Measure every deterministic diffusion solver on the closed-form mixture family: the worst
case over the family's members of the mean error against the exact flow (in units of each
member's data std) at 10, 20 and 40 NFE, for every spacing and a few sigma_max values.

    python tools/solver_table.py                 # every deterministic solver
    python tools/solver_table.py unipc heun      # some of them

Prints a markdown table (docs/solvers.md holds the last run). The family and its references:
tests/processes/gaussian/mixture_family.py. One compiled program per solver (the grid is
data), so the whole table takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from ardiff.processes.gaussian import samplers  # noqa: E402
from ardiff.processes.gaussian.samplers.spacing import SPACINGS  # noqa: E402
from tests.processes.gaussian import mixture_family  # noqa: E402

BUDGETS = (10, 20, 40)
SIGMA_MAXES = (20.0, 80.0, 400.0)


def worst_errors(sampler: str, **options) -> list[float]:
  """The family's worst-case error at each budget in BUDGETS (steps_within each budget)."""
  out = []
  for budget in BUDGETS:
    x = samplers.sample(mixture_family.eps, mixture_family.params(), mixture_family.SCHEDULE,
                        mixture_family.start_points(), jax.random.key(0),
                        mixture_family.member_ids(), sampler=sampler,
                        num_steps=samplers.steps_within(sampler, budget), **options)
    out.append(float(mixture_family.errors(x).max()))
  return out


def main(names: list[str]) -> None:
  names = names or [n for n in samplers.SAMPLERS.names()
                    if samplers.SAMPLERS.get(n).flow_order is not None]
  print("| solver | spacing | sigma_max | " + " | ".join(f"{b} NFE" for b in BUDGETS) + " |")
  print("|---|---|---|" + "---|" * len(BUDGETS))
  for name in names:
    default = samplers.sampler_options(name)
    for spacing in SPACINGS.names():
      for sigma_max in SIGMA_MAXES:
        mark = " (default)" if (spacing, sigma_max) == (default["spacing"],
                                                         default["sigma_max"]) else ""
        errs = worst_errors(name, spacing=spacing, sigma_max=sigma_max)
        print(f"| {name}{mark} | {spacing} | {sigma_max:g} | "
              + " | ".join(f"{e:.3f}" for e in errs) + " |", flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
