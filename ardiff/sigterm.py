"""SIGTERM for a command with nothing to save (`ardiff sample`): one line, and exit at once.

    with StopOnSigterm(what="sampling", output="s.npz") as stop:
      samples = ...                      # SIGTERM here: "stopped sampling before writing s.npz"
      with stop.writing(["s.npz", "s.png"]):
        ...                              # SIGTERM here waits for the block, then says so

Training saves a checkpoint and exits 143 (`ardiff.train.preemption`); a command that writes
its output only at the end has nothing to save, so it exits 143 too (128 + SIGTERM, the
status a scheduler reads as "stopped by SIGTERM"), after one line saying that it stopped and
that nothing was written or lost.

Why not a Python signal handler: Python runs one only when the main thread next executes
Python code, and sampling spends its time inside one XLA call (measured: a handler ran 14 s
after the signal, at the end of a 15 s call; a preemption's grace period is ~30 s). So SIGTERM
is blocked in the main thread (threads started later inherit the mask) and a watcher thread
waits for it with `signal.sigwait`, prints the line and ends the process with `os._exit`. Only
where `signal.pthread_sigmask` exists (POSIX); elsewhere the default action stays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Sequence

EXIT_CODE = 128 + signal.SIGTERM  # 143, as training's `Preempted`


class StopOnSigterm(contextlib.AbstractContextManager):
  """Exit `exit(EXIT_CODE)` on SIGTERM in the block, after one line on stderr."""

  def __init__(self, what: str, output: str, exit: Callable[[int], None] = os._exit):
    self.what, self.output, self._exit = what, output, exit
    self._writing = threading.Lock()  # held while the output is written
    self._written: Sequence[str] = ()
    self._done = False
    self._watcher = None
    self._mask = None

  def __enter__(self):
    if not hasattr(signal, "pthread_sigmask"):
      return self
    self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    self._watcher = threading.Thread(target=self._watch, name="ardiff-sigterm", daemon=True)
    self._watcher.start()
    return self

  def _watch(self) -> None:
    signal.sigwait({signal.SIGTERM})
    if self._done:  # woken by __exit__, not by a signal
      return
    with self._writing:  # a write under way ends first: no half-written file is left
      if self._written:
        said = f"stopped {self.what} after writing {', '.join(self._written)}"
      else:
        said = (f"stopped {self.what} before writing {self.output}; nothing was written and "
                "nothing lost (rerun the same command)")
      print(f"ardiff: SIGTERM: {said}", file=sys.stderr, flush=True)
      self._exit(EXIT_CODE)

  @contextlib.contextmanager
  def writing(self, files: Sequence[str]):
    """The block that writes `files`: a SIGTERM during it is answered once they are written."""
    with self._writing:
      yield
      self._written = tuple(files)

  def __exit__(self, *exc):
    if self._watcher is not None:
      self._done = True
      if self._watcher.is_alive():
        with contextlib.suppress(ProcessLookupError):  # it may have ended meanwhile
          signal.pthread_kill(self._watcher.ident, signal.SIGTERM)  # ends its sigwait
      self._watcher.join()
      signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
    return False
