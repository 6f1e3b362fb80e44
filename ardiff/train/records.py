"""What a run writes beside its checkpoints: `training.json` (the budget, the step reached, the
best validation loss, the wall time) and `metrics.jsonl` (a row per logged step), and the one
reader of `metrics.jsonl`."""

from __future__ import annotations

import json
import os
import time
from typing import Iterator

from ardiff import storage

TRAINING_INFO = "training.json"
METRICS = "metrics.jsonl"


def read_training_info(workdir: str | os.PathLike) -> dict:
  """The run's `training.json` ({} if there is none yet)."""
  path = storage.join(workdir, TRAINING_INFO)
  if not storage.exists(path):
    return {}
  return storage.read_json(path)


def write_json_atomic(path: str, payload: dict) -> None:
  storage.write_atomic(path, json.dumps(payload, indent=2, sort_keys=True))


class TrainingInfo:
  """`training.json` of a run as a dict (`values`), written by process 0 on `save`, which also
  adds the wall time since the last save (from `start_clock`) to `wall_seconds`."""

  def __init__(self, workdir: str, chief: bool):
    self.path = storage.join(workdir, TRAINING_INFO)
    self.values = read_training_info(workdir)
    self.values.setdefault("wall_seconds", 0.0)
    self.chief = chief
    self._clock = time.perf_counter()

  def start_clock(self) -> None:
    self._clock = time.perf_counter()

  def save(self) -> None:
    now = time.perf_counter()
    self.values["wall_seconds"] += now - self._clock
    self._clock = now
    if self.chief:
      write_json_atomic(self.path, self.values)


def _rows(text: str) -> Iterator[tuple[str, dict | None]]:
  """(line, its row, or None for a torn line: a write cut short) for each line."""
  for line in text.splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      row = None
    yield line, row if isinstance(row, dict) else None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """The rows of a run's `metrics.jsonl` in order, torn lines left out ([] if there is none)."""
  path = storage.join(workdir, METRICS)
  if not storage.exists(path):
    return []
  return [row for _, row in _rows(storage.read_text(path)) if row is not None]


def append_metrics(workdir: str, row: dict) -> None:
  storage.append_line(storage.join(workdir, METRICS), json.dumps(row))


def truncate_metrics(workdir: str, step: int) -> int:
  """Drop the rows of `metrics.jsonl` past `step` (and torn lines), atomically; how many.
  On resume: rows of steps the restored checkpoint does not hold would otherwise appear twice."""
  path = storage.join(workdir, METRICS)
  if not storage.exists(path):
    return 0
  kept, dropped = [], 0
  for line, row in _rows(storage.read_text(path)):
    if row is None or row.get("step", 0) > step:
      dropped += 1
    else:
      kept.append(line + "\n")
  if dropped:
    storage.write_atomic(path, "".join(kept))
  return dropped
