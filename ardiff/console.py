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
def held_logs(*names: str):
  """The records the named loggers emit in the block (from any thread), held back instead of
  printed; yields their list. A library that logs a traceback per background thread for a
  failure the caller reports in one line (orbax on a full disk, tfds on a missing dataset)
  stays quiet, and the caller `release`s the records when they say something it does not."""
  hold = _Hold()
  loggers = [logging.getLogger(name) for name in names]
  for logger in loggers:
    logger.addFilter(hold)
  try:
    yield hold.records
  finally:
    for logger in loggers:
      logger.removeFilter(hold)


def release(records: list[logging.LogRecord]) -> None:
  """Print held records (`held_logs`) as their loggers would have."""
  for record in records:
    logging.getLogger(record.name).handle(record)
