"""Stopping on a signal: SIGTERM (preemptible TPUs send it) and Ctrl-C save a checkpoint at the
next step and stop cleanly; on a multi-host job every host stops at one agreed step."""

from __future__ import annotations

import contextlib
import os
import signal
import threading


class Preempted(Exception):
  """Raised after SIGTERM once a checkpoint is saved: rerun the same command to resume."""

  exit_code = 143  # the conventional exit status after SIGTERM (128 + 15)


class Interrupted(Preempted):
  """Raised after Ctrl-C (SIGINT) once a checkpoint is saved."""

  exit_code = 130  # 128 + SIGINT


class SignalStop(contextlib.AbstractContextManager):
  """Turns SIGTERM and a first Ctrl-C (SIGINT) into a stop the loop checks with `poll(step)`,
  so the run saves and exits cleanly; `requested` is the signal's number (0: none). A second
  Ctrl-C raises KeyboardInterrupt at once, as Python does by default.

  coordinated (multi-host jobs): hosts told to stop at different steps must not save apart
  (one host in orbax's collective save while the others train on is a hang). SIGTERM is left
  to JAX's preemption notifier (installed by `jax.distributed.initialize`), which tells every
  host through the coordination service; they agree on one step (the largest step any host
  had reached, plus one) and `poll` reports the stop there on every host alike
  (`multihost_utils.reached_preemption_sync_point`, called at every step as it requires). A
  Ctrl-C on any host is forwarded to that notifier as a SIGTERM, so it stops the job the same
  way (reported as a preemption, exit 143).
  """

  def __init__(self, coordinated: bool = False):
    self.requested = 0
    self.coordinated = coordinated
    self._interrupted = False
    self._previous = {}

  def __enter__(self):
    if _in_main_thread():
      names = ("SIGINT",) if self.coordinated else ("SIGTERM", "SIGINT")
      for name in names:
        if hasattr(signal, name):
          sig = getattr(signal, name)
          self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self._interrupted:
        raise KeyboardInterrupt
      self._interrupted = True
      if self.coordinated:
        os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: every host stops together
        return
    self.requested = self.requested or signum

  def poll(self, step: int) -> int:
    """The signal to stop on after `step` (0: go on). Coordinated: every host gets the same
    answer at every step."""
    if self.coordinated and not self.requested:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.requested = signal.SIGTERM
    return self.requested

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)
    return False


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def raise_if_stopped(requested: int, step: int, workdir: str) -> None:
  """After a signal stopped the loop (`requested`: its number; 0: none), stop the whole
  program, not just the loop: a caller must not go on with a half-trained model as if it were
  finished."""
  if not requested:
    return
  error, what = ((Interrupted, "Ctrl-C") if requested == signal.SIGINT
                 else (Preempted, "SIGTERM"))
  raise error(f"{what}: saved a checkpoint at step {step} in {workdir}; "
              "rerun the same command to resume")
