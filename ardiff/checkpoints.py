"""Checkpoints that are verified before they are trusted, and a restore that falls back.

orbax writes a step atomically (a temporary directory renamed at the end), which protects
against a crash during a save but not against what happens to the files afterwards: a
truncated or deleted data file makes the restore raise deep inside TensorStore, and a few
flipped bytes in a data file restore silently as wrong numbers (measured: values ~1e33).
So:

  save       orbax save, wait until it is final, then (process 0 only) write a manifest,
             `<step>/ardiff-sha256.json`: the sha256 and size of every file of the step,
             written atomically (temporary file + rename) after the step is complete;
  verify     recompute the hashes; any missing, resized or changed file is damage. A step
             without a manifest (written before manifests existed, or killed between the orbax
             commit and the manifest) is trusted as before;
  restore    verify, then compare the step's saved shapes (orbax metadata) with the tree asked
             for: an intact step of another model (a width or a number of classes changed)
             is not damage but CheckpointMismatch, naming the first difference, and nothing
             is moved; then orbax restore (any exception is damage), then check that every
             float leaf is finite (a non-finite value is damage too: training never saves one);
  fallback   `restore_latest` tries the steps newest first; a damaged step is reported in one
             line and moved aside to `damaged-<step>` (a name orbax does not take for a step,
             so the next save at that step does not collide), and the previous kept step is
             tried. If none is intact: CheckpointDamaged naming the directory.

Cost: hashing reads every file once per save and once per restore (sha256 runs at ~1 GB/s on
one CPU core; the spiral model's 150 KB step takes well under a millisecond).
Multi-host: every process verifies from the same files, so they reach the same decision;
only process 0 writes manifests and moves damaged steps aside (`move=False` elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from ardiff import console, storage
from ardiff.errors import CheckpointDamaged, CheckpointMismatch

MANIFEST = "ardiff-sha256.json"
ITEM = "default"  # where a CheckpointManager without item names keeps a step's tree
DAMAGED_PREFIX = "damaged-"


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return storage.join(manager.directory, str(step))


def _files(directory: str) -> list[str]:
  """Paths of every file under `directory` relative to it, the manifest excepted."""
  return [rel for rel in storage.walk_files(directory) if rel != MANIFEST]


def _sha256(path: str) -> tuple[int, str]:
  """(size, sha256) of a file."""
  if storage.is_remote(path):
    data = storage.read_bytes(path)
    return len(data), hashlib.sha256(data).hexdigest()
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return os.path.getsize(path), h.hexdigest()


def write_manifest(directory: str) -> None:
  """`directory/ardiff-sha256.json`: {relative path: [size, sha256]} of every file, atomic."""
  files = {rel: list(_sha256(storage.join(directory, rel))) for rel in _files(directory)}
  storage.write_atomic(storage.join(directory, MANIFEST),
                       json.dumps({"files": files}, indent=0, sort_keys=True), fsync=True)


def verify(directory: str) -> str | None:
  """What is wrong with the step directory's files (None: intact, or no manifest to check)."""
  if not storage.isdir(directory):
    return "the step directory is missing"
  path = storage.join(directory, MANIFEST)
  if not storage.exists(path):
    return None
  try:
    files = json.loads(storage.read_text(path))["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f"its manifest {MANIFEST} is unreadable ({type(e).__name__})"
  for rel, (size, digest) in sorted(files.items()):
    full = storage.join(directory, rel)
    if not storage.isfile(full):
      return f"file {rel} is missing"
    got_size, got_digest = _sha256(full)
    if got_size != size:
      return f"file {rel} has {got_size} bytes, {size} when saved"
    if got_digest != digest:
      return f"file {rel} has changed since it was saved (sha256 differs)"
  return None


def first_nonfinite(tree) -> str | None:
  """The path of the first float leaf of `tree` holding a NaN or inf (None if all finite)."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    local = leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf
    value = np.asarray(local)
    if np.issubdtype(value.dtype, np.inexact) and not np.isfinite(value).all():
      return jax.tree_util.keystr(path)
  return None


def save(manager: ocp.CheckpointManager, step: int, tree, *, chief: bool) -> None:
  """Save `tree` at `step`, wait until it is final, then write its manifest (chief only)."""
  # On a full disk every background write of orbax logs its own traceback (dozens) before
  # the one error raised here: dropped, since the caller reports a full disk in one line
  # (`ardiff.train`); anything else orbax says is printed.
  with console.held_logs("absl", "asyncio", drop=storage.is_disk_full):
    manager.save(step, args=ocp.args.StandardSave(tree), force=True)
    manager.wait_until_finished()
  if chief:
    write_manifest(step_dir(manager, step))


def last_intact_step(directory: str) -> int | None:
  """The newest step of a checkpoint directory whose files verify (None: none does)."""
  if not storage.isdir(directory):
    return None
  steps = sorted((int(n) for n in storage.listdir(directory) if n.isdigit()), reverse=True)
  return next((s for s in steps if verify(storage.join(directory, str(s))) is None), None)


def _key_name(entry) -> str:
  """One entry of a tree path as a name: a dict key, an attribute or an index alike (a saved
  TrainState comes back as dicts, the target is a dataclass of NamedTuples)."""
  for field in ("key", "name", "idx"):
    if hasattr(entry, field):
      return str(getattr(entry, field))
  return str(entry)


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  return {tuple(map(_key_name, path)): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def model_mismatch(saved_tree, target) -> str | None:
  """How a saved tree (its metadata: shapes, no values) differs from `target` in structure or
  shape, the first difference in words; None where they agree."""
  saved, wanted = _shapes(saved_tree), _shapes(target)
  for path in sorted(saved.keys() | wanted.keys()):
    where = "".join(f"[{name!r}]" for name in path)
    if path not in saved:
      return f"{where} is not in it"
    if path not in wanted:
      return f"it has {where}, which this model has not"
    if saved[path] != wanted[path]:
      return f"{where} has shape {saved[path]} there, {wanted[path]} in this model"
  return None


def _check_same_model(manager: ocp.CheckpointManager, step: int, target) -> None:
  """CheckpointMismatch where the step holds another model's tree (a width or a number of
  classes changed): that is not damage, and nothing may be moved aside for it. Metadata that
  cannot be read says nothing here: the restore then judges the step."""
  if target is None:
    return
  try:
    # orbax warns that the item has no step-level metadata file: not news to the user.
    with console.held_logs("absl", drop=lambda error: True), \
        ocp.StandardCheckpointer() as checkpointer:
      saved = checkpointer.metadata(storage.join(step_dir(manager, step), ITEM)).item_metadata
  except Exception:  # noqa: BLE001 - unreadable metadata is for the restore to report
    return
  difference = model_mismatch(saved, target)
  if difference is not None:
    raise CheckpointMismatch(
        f"checkpoint step {step} in {manager.directory} belongs to a different model: "
        f"{difference}; nothing was moved (train this model in another directory, or delete "
        "that one to start afresh)")


def _damage(manager: ocp.CheckpointManager, step: int, target) -> tuple[Any, str | None]:
  """(restored tree, None), or (None, what is wrong with the step); CheckpointMismatch for an
  intact step of another model."""
  problem = verify(step_dir(manager, step))
  if problem is not None:
    return None, problem
  _check_same_model(manager, step, target)
  try:
    # A checkpointer of its own on the step's item directory, not the manager: a failed
    # restore can leave a manager misconfigured (measured: after an empty step directory it
    # refuses every later restore), and the manager still has to save afterwards.
    with ocp.StandardCheckpointer() as checkpointer:
      tree = checkpointer.restore(storage.join(step_dir(manager, step), ITEM), target)
  except Exception as e:  # noqa: BLE001 - any failure to read the step is damage to report
    first = (str(e).strip().splitlines() or [""])[0]
    return None, f"orbax could not restore it: {type(e).__name__}: {first[:160]}"
  bad = first_nonfinite(tree)
  if bad is not None:
    return None, f"non-finite values in {bad}"
  return tree, None


def restore(manager: ocp.CheckpointManager, step: int, target=None):
  """The verified tree of one step; CheckpointDamaged naming the step directory otherwise."""
  tree, problem = _damage(manager, step, target)
  if problem is not None:
    raise CheckpointDamaged(f"checkpoint {step_dir(manager, step)} is damaged: {problem}")
  return tree


def move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Rename a damaged step to `damaged-<step>` (`-2`, `-3`, ... if taken); returns the path."""
  root = os.fspath(manager.directory)
  dest = storage.join(root, f"{DAMAGED_PREFIX}{step}")
  n = 1
  while storage.exists(dest):
    n += 1
    dest = storage.join(root, f"{DAMAGED_PREFIX}{step}-{n}")
  storage.rename(step_dir(manager, step), dest)
  manager.reload()
  return dest


def restore_latest(manager: ocp.CheckpointManager, target, log: Callable[[str], None], *,
                   move: bool = True, required: bool = True):
  """(tree, step) of the newest intact step; (None, None) if there is no step at all.

  Damaged steps are reported through `log`, one line each, and (with `move`) moved aside.
  When every step is damaged: CheckpointDamaged if `required`, else (None, None).
  """
  steps = sorted(manager.all_steps(), reverse=True)
  damaged = []
  for i, step in enumerate(steps):
    tree, problem = _damage(manager, step, target)
    if problem is None:
      return tree, step
    where = f"; moved it to {move_aside(manager, step)}" if move else ""
    then = f"trying step {steps[i + 1]}" if i + 1 < len(steps) else "no earlier step is kept"
    log(f"checkpoint step {step} in {manager.directory} is damaged ({problem}){where}; {then}")
    damaged.append(step)
  if damaged and required:
    listed = ", ".join(str(s) for s in damaged)
    aside = f" (moved to {DAMAGED_PREFIX}<step>; a rerun starts afresh)" if move else ""
    raise CheckpointDamaged(f"no intact checkpoint in {manager.directory}: step(s) {listed} "
                            f"damaged{aside}")
  return None, None
