"""ARDM step budgets by dynamic programming (Hoogeboom et al. 2021, section 4).

Generating L positions in S parallel steps of sizes k_1..k_S (summing to L) costs, in the
per-step loss approximation,

  cost = sum_s k_s * L_{t_s},   t_s = k_1 + ... + k_{s-1} (positions revealed before step s),

where L_t is the expected loss of one hidden position given t revealed (for example from
:func:`ardiff.processes.autoregressive.objectives.per_step_losses`). With S = L this is sum_t L_t, the
ARDM bound. :func:`optimal_budget` finds the sizes minimising the cost exactly.
"""

from __future__ import annotations

import numpy as np


def _check_losses(losses) -> np.ndarray:
  losses = np.asarray(losses, np.float64)
  if losses.ndim != 1 or losses.size < 1 or not np.isfinite(losses).all():
    raise ValueError(f"losses must be a finite 1-D array [L], got shape {losses.shape}")
  return losses


def budget_cost(losses, step_sizes) -> float:
  """sum_s k_s * L_{t_s} for the given step sizes (which must sum to L = len(losses))."""
  losses = _check_losses(losses)
  sizes = [int(k) for k in step_sizes]
  if any(k < 1 for k in sizes) or sum(sizes) != losses.size:
    raise ValueError(f"step_sizes must be positive and sum to {losses.size}, got {sizes}")
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
  return float(np.dot(sizes, losses[starts]))


def optimal_budget(losses, num_steps: int) -> tuple[tuple[int, ...], float]:
  """Step sizes (summing to L) for num_steps steps that minimise the cost, and that cost.

  O(num_steps * L^2) time in numpy (L = 784 takes a second or so for S = L).

  Args:
    losses: float [L], L_t for t = 0..L-1.
    num_steps: S in 1..L.
  """
  losses = _check_losses(losses)
  length = losses.size
  if not 1 <= num_steps <= length:
    raise ValueError(f"num_steps must lie in 1..{length}, got {num_steps}")
  t = np.arange(length + 1)
  # step_cost[a, b] = (b - a) * L_a for a < b: reveal positions a..b-1 given a revealed.
  step_cost = np.where(t[None, :] > t[:length, None],
                       (t[None, :] - t[:length, None]) * losses[:, None], np.inf)
  cost = np.full(length + 1, np.inf)  # cost[t]: best with s steps ending at t revealed
  cost[0] = 0.0
  back = np.zeros((num_steps, length + 1), np.int64)
  for s in range(num_steps):
    total = cost[:length, None] + step_cost  # [from a, to b]
    back[s] = np.argmin(total, axis=0)
    cost = np.concatenate([[np.inf], total[back[s, 1:], t[1:]]])
  sizes, end = [], length
  for s in range(num_steps - 1, -1, -1):
    start = int(back[s, end])
    sizes.append(end - start)
    end = start
  return tuple(reversed(sizes)), float(cost[length])


def resolve_dp(spec, losses):
  """An `ardm:dp=S` spec with the DP's step sizes for per-step losses L_t added as `sizes`.

  Other specs pass through unchanged. The sizes are the ones `optimal_budget(losses, S)` finds
  (fit the losses on training data and score elsewhere: see
  `ardiff.processes.autoregressive.evaluate.budget_losses`).
  """
  import dataclasses

  from ardiff.processes.spec import parse_spec

  spec = parse_spec(spec)
  dp = spec.get("dp")
  if dp is None or spec.get("sizes") is not None:
    return spec
  sizes, _ = optimal_budget(losses, dp)
  return dataclasses.replace(spec, options=spec.options + (("sizes", tuple(sizes)),))
