"""One process at a time in a directory: an OS lock held for the life of a run.

    with workdir_lock(directory, "training"):
      ...  # a second process asking for the same directory gets WorkdirLocked at once

The lock is `fcntl.flock` on `<directory>/.ardiff.lock`, taken without waiting. The file
holds the holder's pid, host, start time and role, so that the refusal names them. The OS
releases the lock when the holder exits in any way, kill -9 included (flock belongs to the
open file, which dies with the process), so there is no stale lock to clean up; the file
itself is left in place on purpose (deleting it would let a third process lock a new file
while a second still holds the old one).

Re-entrant within a process: a directory this process holds already is granted again (a
count), so nested callers (e.g. `ardiff run` whose work dir is also a model directory) do not
lock themselves out. On multi-host runs only process 0 takes it (all processes share the
directory by design). Caveat: on network file systems flock is only as good as the server's
lock support (Linux NFSv4 maps it to byte-range locks, which works; some FUSE mounts do not).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

from ardiff import storage
from ardiff.errors import StorageError, WorkdirLocked

LOCK_FILE = ".ardiff.lock"

_held: dict[str, list] = {}  # realpath -> [fd, count]


def _holder(fd: int) -> str:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    info = json.loads(os.read(fd, 4096).decode() or "{}")
  except (OSError, ValueError):
    info = {}
  if not info.get("pid"):
    return "another process (it has not written its pid yet)"
  return (f"pid {info['pid']} on host {info.get('host', '?')} ({info.get('role', 'a run')}, "
          f"since {info.get('since', '?')})")


def acquire(directory: str | os.PathLike, role: str = "a run") -> str:
  """Lock `directory` (created if missing) for this process; WorkdirLocked if another holds
  it. Returns the key to `release` it with."""
  storage.makedirs(directory)
  key = os.path.realpath(directory)
  if key in _held:
    _held[key][1] += 1
    return key
  path = os.path.join(key, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:  # a read-only mount or folder: the first file a run writes
    raise StorageError(f"cannot write to the work dir {directory}: {e.strerror} ({path})") \
        from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _holder(fd)
    os.close(fd)
    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise
    raise WorkdirLocked(f"{directory} is in use by {holder}; wait for that run to finish or "
                        f"stop it (lock file {path})") from None
  info = {"pid": os.getpid(), "host": socket.gethostname(), "role": role,
          "since": datetime.datetime.now().isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(info).encode(), 0)
  _held[key] = [fd, 1]
  return key


def release(key: str) -> None:
  entry = _held[key]
  entry[1] -= 1
  if entry[1] == 0:
    del _held[key]
    os.close(entry[0])  # closing the last descriptor releases the flock


@contextlib.contextmanager
def workdir_lock(directory: str | os.PathLike, role: str = "a run", *, take: bool = True):
  """Hold the lock of `directory` for the block (`take=False`: a no-op, for processes other
  than the chief of a multi-host run)."""
  if not take or storage.is_remote(directory):  # a bucket has no flock
    yield
    return
  key = acquire(directory, role)
  try:
    yield
  finally:
    release(key)
