"""The errors a user can cause, and the exit status each one ends `ardiff` with.

The CLI prints an `ArdiffError` as one line (no traceback unless ARDIFF_DEBUG=1 or --debug)
and exits with its `exit_code`: 2 for bad input of any kind (a config value, a data file, a
damaged checkpoint with no good one to fall back to, a diverged run, a locked work dir).
Every message names what is wrong (the key, the file, the step) and what would be allowed.
"""

from __future__ import annotations


class ArdiffError(Exception):
  """A problem the user can fix; the message is the whole story."""

  exit_code = 2


class DataError(ArdiffError, ValueError):
  """Bad data: a file or array that does not hold what it must (the message names the file or
  dataset, the field, the first bad index and what is allowed)."""


class DataNotFound(ArdiffError, FileNotFoundError):
  """Data that is not where it was looked for (a tfds dataset not prepared); says how to get it."""


class TrainingDiverged(ArdiffError):
  """A non-finite loss, gradient norm or parameter during training; nothing non-finite was
  saved (ardiff.train)."""


class CheckpointDamaged(ArdiffError):
  """No checkpoint step of a directory could be restored intact (ardiff.checkpoints)."""


class CheckpointMismatch(ArdiffError):
  """An intact checkpoint of another model (other shapes or leaves) where this one resumes;
  nothing is moved (ardiff.checkpoints)."""


class WorkdirLocked(ArdiffError):
  """Another live process holds the directory's lock (ardiff.workdir)."""


class StorageError(ArdiffError):
  """A work dir that cannot be written (a bucket that is not there, no credentials)."""


class DiskFull(StorageError):
  """No space left (or a quota reached) where a run writes; the message names the disk and the
  last intact checkpoint, which a rerun resumes from (ardiff.train)."""
