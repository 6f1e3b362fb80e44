"""A step-by-step decoder as data, run two ways: to its end (the sample) or with every state
kept (the step history). One step function serves both, so a history can never drift from the
sample it shows.

A `StepLoop` holds ``step(i, state) -> state`` for i = 0 .. num_steps - 1 and the start state.
`run` is a ``lax.fori_loop`` (num_steps may be traced: one program for every step count);
`trace` a ``lax.scan`` over the same steps (num_steps must be an int) that also returns
``observe(state)`` after every step, stacked on a leading axis [S, ...].
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class StepLoop(NamedTuple):
  step: Callable[[jax.Array, Any], Any]  # (i, state) -> the state after step i
  start: Any  # the state before step 0
  num_steps: Any  # S: an int, or a traced int32 scalar (`run` only)


def run(loop: StepLoop) -> Any:
  """The state after the last step."""
  return jax.lax.fori_loop(0, jnp.asarray(loop.num_steps, jnp.int32), loop.step, loop.start)


def trace(loop: StepLoop, observe: Callable[[Any], Any] = lambda state: state) -> tuple:
  """(the state after the last step, observe(state) after each step stacked [S, ...])."""

  def body(state, i):
    state = loop.step(i, state)
    return state, observe(state)

  return jax.lax.scan(body, loop.start, jnp.arange(int(loop.num_steps), dtype=jnp.int32))
