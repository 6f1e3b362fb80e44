"""The ARDM step-budget dynamic programme against brute force over all compositions."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from ardiff.processes.autoregressive.budget import budget_cost, optimal_budget


def _compositions(n: int, parts: int):
  """All tuples of `parts` positive ints summing to n."""
  for cuts in itertools.combinations(range(1, n), parts - 1):
    bounds = (0,) + cuts + (n,)
    yield tuple(b - a for a, b in zip(bounds[:-1], bounds[1:]))


def _brute(losses: np.ndarray, steps: int) -> float:
  best = np.inf
  for sizes in _compositions(len(losses), steps):
    start, cost = 0, 0.0
    for k in sizes:
      cost += k * losses[start]
      start += k
    best = min(best, cost)
  return best


CURVES = {
    "decreasing": np.linspace(2.5, 0.3, 8) ** 2,
    "non_monotone": np.array([1.0, 3.0, 0.2, 2.5, 0.1, 4.0, 0.5, 0.05]),
    "increasing": np.linspace(0.1, 1.0, 8),
    "random": np.random.default_rng(0).exponential(size=8),
    "with_ties": np.array([1.0, 1.0, 0.5, 0.5, 0.5, 2.0, 2.0, 0.0]),
}


@pytest.mark.parametrize("name", sorted(CURVES))
def test_dp_equals_brute_force(name):
  losses = CURVES[name]
  for steps in range(1, 9):
    sizes, cost = optimal_budget(losses, steps)
    assert len(sizes) == steps and sum(sizes) == 8 and min(sizes) >= 1
    np.testing.assert_allclose(cost, _brute(losses, steps), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(budget_cost(losses, sizes), cost, rtol=1e-12, atol=1e-12)


def test_extremes_and_monotonicity():
  losses = CURVES["random"]
  assert optimal_budget(losses, 8) == ((1,) * 8, pytest.approx(losses.sum()))
  assert optimal_budget(losses, 1) == ((8,), pytest.approx(8 * losses[0]))
  # For a decreasing curve more steps never hurt; the first step of few steps is small.
  dec = CURVES["decreasing"]
  costs = [optimal_budget(dec, s)[1] for s in range(1, 9)]
  assert all(a >= b - 1e-12 for a, b in zip(costs, costs[1:]))
  assert optimal_budget(dec, 2)[0][0] < 4


def test_full_size_is_fast():
  losses = 1.0 / (1.0 + np.arange(784))
  start = time.perf_counter()
  sizes, cost = optimal_budget(losses, 20)
  assert time.perf_counter() - start < 10.0
  assert len(sizes) == 20 and sum(sizes) == 784
  assert budget_cost(losses, sizes) == pytest.approx(cost)
  uniform = budget_cost(losses, [784 // 20 + 1] * 4 + [784 // 20] * 16)
  assert cost <= uniform


def test_budget_rejects_bad_input():
  with pytest.raises(ValueError, match="num_steps"):
    optimal_budget(np.ones(4), 5)
  with pytest.raises(ValueError, match="num_steps"):
    optimal_budget(np.ones(4), 0)
  with pytest.raises(ValueError, match="losses"):
    optimal_budget(np.ones((2, 2)), 1)
  with pytest.raises(ValueError, match="losses"):
    optimal_budget(np.array([1.0, np.nan]), 1)
  with pytest.raises(ValueError, match="step_sizes"):
    budget_cost(np.ones(4), (2, 1))
