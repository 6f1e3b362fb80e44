"""A persistent JAX compilation cache for the command-line entry points.

Every sampler is one compiled program per batch size and guidance setting (the step count and
the step plan are data), and every train step is one per model and batch: in a new process each
of them costs 1-2 s of XLA compilation on a CPU, and `ardiff sample` is a new process every
time. JAX can keep compiled executables on disk, keyed by the program, the compiler options, the
jaxlib version and the device, and load them in the next process instead of compiling again
(measured in docs/sampling.md: `ardiff sample` on the spiral starts about 2 s sooner). Entries of
another jaxlib are never loaded, only left behind: deleting the directory is always safe.

Only the command line turns this on (`ardiff run`, `ardiff sample`, `ardiff bench`); importing
the library changes no JAX setting. The directory is, in order:

  ARDIFF_COMPILATION_CACHE=DIR      that directory;
  ARDIFF_COMPILATION_CACHE=off      no cache (also 0, false, no, none, or an empty value);
  $XDG_CACHE_HOME/ardiff/jax        otherwise, or ~/.cache/ardiff/jax without XDG_CACHE_HOME.

The state lives in jax.config only (jax_compilation_cache_dir and the two thresholds below).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

ENV_VAR = "ARDIFF_COMPILATION_CACHE"
OFF_VALUES = ("", "0", "off", "false", "no", "none")


def cache_directory(environ: Mapping[str, str] | None = None) -> str | None:
  """The cache directory the environment asks for (absolute), or None if it is switched off."""
  environ = os.environ if environ is None else environ
  value = environ.get(ENV_VAR)
  if value is not None:
    if value.strip().lower() in OFF_VALUES:
      return None
    return os.path.abspath(os.path.expanduser(value.strip()))
  # XDG base directory spec: an unset, empty or relative XDG_CACHE_HOME is ignored.
  base = environ.get("XDG_CACHE_HOME", "")
  if not os.path.isabs(base):
    base = os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "ardiff", "jax")


def enable_compilation_cache(directory: str | None = None) -> str | None:
  """Turn on JAX's persistent compilation cache; returns its directory, or None if it is off.

  directory: where to keep it; None resolves it from the environment (see the module doc).
  Call this before the first compilation of the process: JAX decides once, at its first
  compilation, whether the process uses the cache. A directory that cannot be created is not
  an error (the run only loses the cache): one warning line on stderr, and None.
  """
  directory = (cache_directory() if directory is None
               else os.path.abspath(os.path.expanduser(directory)))
  if directory is None:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    print(f"ardiff: warning: compilation cache off, cannot create {directory!r} ({e.strerror}); "
          f"set {ENV_VAR} to a writable directory or to 'off'", file=sys.stderr)
    return None
  import jax

  jax.config.update("jax_compilation_cache_dir", directory)
  # JAX's default writes only programs that took >= 1 s to compile; most of ours take less on
  # their own, yet together they are the 2 s: `ardiff sample` compiles about 15 programs (the
  # sampler and small eager ops), a short spiral experiment about 80, 1 MB in all.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
