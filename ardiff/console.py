"""One voice per job: what a run says on the terminal comes from process 0 alone.

    from ardiff import console
    console.log("resumed from step 500")              # stderr, process 0 only
    with console.progress(total=3000, initial=500) as bar:
      for step in ...: bar.update(1)                  # a tqdm bar with ETA on a terminal,
                                                      # nothing when stderr is a file or pipe
On a pod every host runs the same program; without this each would print every line (8 hosts:
8 copies, interleaved). Messages go through tqdm.write, so they print above a live bar instead
of breaking it. Where stderr is not a terminal (logs redirected to a file, CI, a detached job)
there is no bar: the training loop's periodic plain lines carry the progress and ETA.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Callable

import jax


def is_chief() -> bool:
  """Process 0 of a multi-host job (always True on one host)."""
  return jax.process_index() == 0


def log(message: str) -> None:
  """Print one line to stderr on process 0; nothing on other processes."""
  if not is_chief():
    return
  from tqdm import tqdm

  tqdm.write(message, file=sys.stderr)
  sys.stderr.flush()


class _NoBar:
  def update(self, n: int = 1) -> None:
    del n

  def close(self) -> None:
    pass


def attached() -> bool:
  """Whether stderr is a terminal (a person is watching)."""
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


@contextlib.contextmanager
def progress(total: int, initial: int = 0, description: str = "train"):
  """A progress bar with rate and ETA on process 0 when stderr is a terminal, else a no-op."""
  if not (is_chief() and attached()) or initial >= total:
    yield _NoBar()
    return
  from tqdm import tqdm

  bar = tqdm(total=total, initial=initial, desc=description, unit="step", file=sys.stderr,
             dynamic_ncols=True, leave=False)
  try:
    yield bar
  finally:
    bar.close()


class _Hold(logging.Filter):
  def __init__(self):
    super().__init__()
    self.records: list[logging.LogRecord] = []

  def filter(self, record: logging.LogRecord) -> bool:
    self.records.append(record)
    return False


@contextlib.contextmanager
def held_logs(*names: str, drop: Callable[[BaseException | None], bool] = lambda error: False):
  """What the named loggers emit in the block (from any thread), and the errors native code
  prints through `sys.excepthook` or `sys.unraisablehook` (TensorStore's completions arriving
  at orbax's closed event loop), held back while it runs and printed when it ends, unless
  `drop(the error it ends with, or None)` says they only repeat what the caller reports in
  one line: orbax prints a traceback per background write that fails on a full disk, tfds a
  warning per folder it finds incomplete before the dataset is reported missing."""
  hold = _Hold()
  loggers = [logging.getLogger(name) for name in names]
  for logger in loggers:
    logger.addFilter(hold)
  hooks = sys.excepthook, sys.unraisablehook
  sys.excepthook = lambda *exc_info: hold.records.append(exc_info)
  sys.unraisablehook = hold.records.append
  error = None
  try:
    yield
  except BaseException as e:
    error = e
    raise
  finally:
    sys.excepthook, sys.unraisablehook = hooks
    for logger in loggers:
      logger.removeFilter(hold)
    if not drop(error):
      for item in hold.records:  # as they would have been printed
        if isinstance(item, logging.LogRecord):
          logging.getLogger(item.name).handle(item)
        elif isinstance(item, tuple):
          sys.excepthook(*item)
        else:
          sys.unraisablehook(item)
