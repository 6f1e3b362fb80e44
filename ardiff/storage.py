"""Files of work dirs and model caches, on a local disk or in a bucket (gs://...).

    storage.write_atomic("gs://bucket/run/training.json", text)
    storage.append_line("runs/spiral/metrics.jsonl", json_row)

A TPU VM's local disk is neither shared between a pod's workers nor kept when a spot VM is
preempted, so a pod run keeps its work dir in Cloud Storage: `--workdir=gs://bucket/run`.
Local paths go through `os` exactly as before (rename-based atomic writes, fsync); a path with
a scheme (`gs://`) goes through `etils.epath` (gcsfs underneath; orbax and TensorStore write
checkpoints there natively). What differs in a bucket, and how it is handled:
  atomic writes  one object upload is atomic (readers see the old or the new object, never
                 half), so a file is written in one piece, without the temporary-file dance;
  appends        objects cannot be appended to: `append_line` rewrites the object with the
                 line added (metrics.jsonl holds a row per logged step: small);
  renames        a copy and a delete (`rename`), not atomic: used only to move damaged
                 checkpoints aside, which a crash halfway merely repeats;
  locks          there is no flock: `ardiff.workdir` does not lock a bucket work dir (one run
                 per bucket work dir is the user's to keep).
Tests run all of it against a GCS emulator (tests/test_bucket.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import posixpath
import re
from typing import Any, Iterator

from ardiff.errors import DataError, StorageError

_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


def is_remote(path: str | os.PathLike) -> bool:
  """Whether `path` names an object store (`gs://...`, any `scheme://`), not a local file."""
  return "://" in os.fspath(path)


def check_writable(directory: str | os.PathLike) -> None:
  """For a bucket work dir: write and delete a probe object, so that a missing bucket, missing
  credentials or an unreachable endpoint stop a run in one line (StorageError, exit 2) before
  anything is trained. Local directories: nothing to check here (os errors name the path)."""
  directory = os.fspath(directory)
  if not is_remote(directory):
    return
  scheme, rest = directory.split("://", 1)
  bucket = rest.split("/", 1)[0]
  if scheme == "gs" and not _GCS_BUCKET.fullmatch(bucket):
    # Checked here: TensorStore refuses such a name inside orbax's save threads, and the
    # save then waits forever (measured with "gs://b/...").
    raise StorageError(f"{directory}: {bucket!r} is not a GCS bucket name (3-63 characters "
                       "of a-z, 0-9, '-', '_' and '.', starting and ending with a letter or "
                       "digit)")
  probe = join(directory, ".ardiff-write-probe")
  # The clients log each retry with a traceback; the one line below says what matters.
  quiet = [logging.getLogger(name) for name in ("gcsfs", "google.auth", "google.auth._default")]
  levels = [logger.level for logger in quiet]
  for logger in quiet:
    logger.setLevel(logging.CRITICAL)
  try:
    write_atomic(probe, b"")
    remove(probe)
  except Exception as e:  # noqa: BLE001 - whatever the client raises, the user needs the path
    first = (str(e).strip().splitlines() or [""])[0][:200]
    raise StorageError(f"cannot write to {directory}: {type(e).__name__}: {first} (is the "
                       "bucket there, and are credentials set: gcloud auth "
                       "application-default login?)") from None
  finally:
    for logger, level in zip(quiet, levels):
      logger.setLevel(level)


def _remote(path: str):
  from etils import epath  # gcsfs behind it; imported only for bucket paths

  return epath.Path(path)


def absolute(path: str | os.PathLike) -> str:
  """`os.path.abspath` for local paths; a bucket path as it is."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def join(path: str | os.PathLike, *parts: str) -> str:
  return os.path.join(os.fspath(path), *parts)


def normpath(path: str | os.PathLike) -> str:
  """`os.path.normpath` ("a/../b" -> "b"), keeping a bucket path's "scheme://" intact (an
  object store would take ".." as a name)."""
  path = os.fspath(path)
  if is_remote(path):
    scheme, rest = path.split("://", 1)
    return f"{scheme}://{posixpath.normpath(rest)}"
  return os.path.normpath(path)


def exists(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _remote(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  return _remote(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str | os.PathLike) -> bool:
  path = os.fspath(path)
  if is_remote(path):
    p = _remote(path)
    return p.exists() and not p.is_dir()
  return os.path.isfile(path)


def makedirs(path: str | os.PathLike) -> None:
  """Create the directory and its parents (a no-op in a bucket, where folders are prefixes).
  Locally, a path that cannot be made (a file in the way, a read-only or pseudo file system)
  is a StorageError naming it."""
  path = os.fspath(path)
  if is_remote(path):
    _remote(path).mkdir(parents=True, exist_ok=True)
    return
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise StorageError(f"cannot create the directory {path}: {_why_not_made(path, e)}") \
        from None


def file_in_the_way(path: str | os.PathLike) -> str | None:
  """The path itself or the nearest of its parents that exists, where that is not a directory
  (a file or a link to one: a directory cannot be made there); None if there is none."""
  path = os.fspath(path)
  if is_remote(path):
    return None  # a bucket has prefixes, not folders: nothing is in the way
  current = _nearest_existing(path)
  return None if os.path.isdir(current) else current


def _why_not_made(path: str, error: OSError) -> str:
  """What an OSError from making the directory `path` means, in words (the file in the way)."""
  blocker = file_in_the_way(path)
  if blocker is not None:
    return f"{blocker} is a file, not a directory"
  if error.errno == errno.ENOENT:  # the parent exists (else it would be made): e.g. /proc
    return f"{_nearest_existing(path)} takes no new folders ({error.strerror})"
  return error.strerror or str(error)


_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error`, or one it was raised from, is a full disk or quota: an OSError ENOSPC or
  EDQUOT, or TensorStore's words for one (orbax raises ValueError("RESOURCE_EXHAUSTED: ...
  No space left on device [os_error_code='28']"))."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _FULL:
      return True
    if any(os.strerror(code) in str(error) for code in _FULL):
      return True
    error = error.__cause__ or error.__context__
  return False


def mount_point(path: str | os.PathLike) -> str:
  """The mount point of the file system that holds `path` (the path itself for a bucket)."""
  path = os.fspath(path)
  if is_remote(path):
    return path
  current = _nearest_existing(path)
  while not os.path.ismount(current):
    current = os.path.dirname(current)
  return current


def _nearest_existing(path: str) -> str:
  current = os.path.abspath(path)
  while not os.path.exists(current) and os.path.dirname(current) != current:
    current = os.path.dirname(current)
  return current


def listdir(path: str | os.PathLike) -> list[str]:
  path = os.fspath(path)
  if is_remote(path):
    return sorted(p.name for p in _remote(path).iterdir())
  return sorted(os.listdir(path))


def read_bytes(path: str | os.PathLike) -> bytes:
  path = os.fspath(path)
  if is_remote(path):
    return _remote(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str | os.PathLike) -> str:
  return read_bytes(path).decode()


def read_json(path: str | os.PathLike) -> Any:
  """What a JSON file holds; DataError naming the file when it is not JSON (cut short, or
  edited by hand), where json would raise without saying which file it read."""
  try:
    return json.loads(read_bytes(path).decode())
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError alike
    raise DataError(f"{os.fspath(path)} is not valid JSON ({e})") from None


def write_atomic(path: str | os.PathLike, data: str | bytes, *, fsync: bool = False) -> None:
  """Write the whole file so that a reader (or a crash) sees the old or the new content, never
  a part: locally a temporary file renamed over it (fsync'd first if asked), in a bucket one
  object upload."""
  path = os.fspath(path)
  raw = data.encode() if isinstance(data, str) else data
  if is_remote(path):
    _remote(path).write_bytes(raw)
    return
  tmp = path + ".tmp"
  try:
    with open(tmp, "wb") as f:
      f.write(raw)
      if fsync:
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError:  # a full disk, a read-only folder: leave no half-written temporary file
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def append_line(path: str | os.PathLike, line: str) -> None:
  """Add one line (newline added) at the end of a text file, creating it if missing."""
  path = os.fspath(path)
  text = line + "\n"
  if is_remote(path):
    p = _remote(path)
    old = p.read_text() if p.exists() else ""
    p.write_text(old + text)
    return
  with open(path, "a") as f:
    f.write(text)


def rename(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Move a file or directory (in a bucket: copy every object, then delete the source)."""
  src, dst = os.fspath(src), os.fspath(dst)
  if not is_remote(src):
    os.rename(src, dst)
    return
  source = _remote(src)
  if source.is_dir():
    for rel in walk_files(src):
      target = _remote(join(dst, rel))
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes((source / rel).read_bytes())
    source.rmtree()
  else:
    source.rename(_remote(dst))


def remove(path: str | os.PathLike) -> None:
  path = os.fspath(path)
  if is_remote(path):
    _remote(path).unlink()
  else:
    os.remove(path)


def walk_files(directory: str | os.PathLike) -> Iterator[str]:
  """Paths of every file under `directory`, relative to it (sorted)."""
  directory = os.fspath(directory)
  if is_remote(directory):
    # The gcsfs backend yields folders without the "gs://" (and `**` globs are refused).
    root = directory.split("://", 1)[1].rstrip("/")
    out = []
    for dirpath, _, files in _remote(directory).walk():
      folder = os.fspath(dirpath).split("://", 1)[-1]
      out += [posixpath.normpath(posixpath.join(posixpath.relpath(folder, root), name))
              for name in files]
  else:
    out = [os.path.relpath(os.path.join(r, name), directory)
           for r, _, files in os.walk(directory) for name in files]
  return iter(sorted(out))
