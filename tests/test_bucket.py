"""Work dirs in a bucket (gs://...), against a GCS emulator server started here on 127.0.0.1
(gcp-storage-emulator, in memory, with the generation headers and preconditions it lacks added:
tests/_gcs_emulator.py): gcsfs (through etils.epath) for files, TensorStore for orbax's
checkpoint data, both pointed at it by their environment variables."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from ardiff import storage
from ardiff.train import read_training_info, train
from tests._gcs_emulator import gcs_emulator
from tests.train.helpers import assert_same_leaves, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "ardiff-test"


@pytest.fixture(scope="module")
def bucket():
  saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL",
                                          "NO_GCE_CHECK")}
  with gcs_emulator(BUCKET) as url:
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
                      NO_GCE_CHECK="true")  # no metadata-server probe for credentials
    try:
      yield f"gs://{BUCKET}"
    finally:
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v


def test_storage_primitives_in_the_bucket(bucket):
  path = f"{bucket}/prims/a/b.txt"
  storage.makedirs(f"{bucket}/prims/a")
  storage.write_atomic(path, "one\n")
  storage.append_line(path, "two")
  assert storage.read_text(path) == "one\ntwo\n" and storage.isfile(path)
  assert storage.isdir(f"{bucket}/prims/a") and not storage.isfile(f"{bucket}/prims/a")
  storage.rename(f"{bucket}/prims/a", f"{bucket}/prims/c")
  assert list(storage.walk_files(f"{bucket}/prims")) == ["c/b.txt"]
  assert not storage.exists(path) and storage.read_text(f"{bucket}/prims/c/b.txt") == "one\ntwo\n"
  assert storage.normpath(f"{bucket}/run/../models") == f"{bucket}/models"


def test_training_resumes_bit_identically_in_a_bucket(bucket, tmp_path):
  process, data, cfg = tiny_setup(steps=6)
  cfg = dataclasses.replace(cfg, checkpoint_every=3)
  local = train(process, data.x_train, data.y_train, cfg, tmp_path / "local", log=lambda m: None)
  remote = f"{bucket}/resume"
  messages = []
  train(process, data.x_train, data.y_train, cfg, remote, stop_at=2, log=messages.append)
  resumed = train(process, data.x_train, data.y_train, cfg, remote, log=messages.append)
  assert f"resumed from step 2 in {remote}" in messages
  assert_same_leaves(local.params, resumed.params)
  assert_same_leaves(local.ema_params, resumed.ema_params)
  rows = [json.loads(l) for l in storage.read_text(f"{remote}/metrics.jsonl").splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # each step once across the stop
  assert read_training_info(remote)["step"] == 6
  steps = sorted(int(d) for d in storage.listdir(f"{remote}/checkpoints") if d.isdigit())
  assert steps == [3, 6]  # keep 2 of 2 (stop), 3, 6
  assert storage.exists(f"{remote}/checkpoints/6/ardiff-sha256.json")
  events = [f for f in storage.listdir(f"{remote}/tensorboard") if f.startswith("events.out")]
  assert len(events) == 2  # one per start, uploaded whole

  # A damaged latest step in the bucket falls back to step 3 (moved aside, not deleted) and
  # the retrained run ends where the undamaged one did.
  victim = next(f for f in storage.walk_files(f"{remote}/checkpoints/6")
                if "ocdbt" in f and not f.endswith(".json"))
  storage.write_atomic(f"{remote}/checkpoints/6/{victim}", b"garbage")
  messages.clear()
  again = train(process, data.x_train, data.y_train, cfg, remote, log=messages.append)
  assert any("checkpoint step 6" in m and "damaged" in m for m in messages), messages
  assert f"resumed from step 3 in {remote}" in messages
  assert storage.isdir(f"{remote}/checkpoints/damaged-6")
  assert_same_leaves(local.params, again.params)


def test_the_spiral_experiment_runs_in_a_bucket_and_reruns_without_training(bucket, capsys):
  from ardiff.cli import main

  workdir = f"{bucket}/spiral"
  args = ["run", os.path.join(ROOT, "experiments", "spiral.py"), f"--workdir={workdir}",
          "--config.train.steps=20", "--config.train.log_every=10",
          "--config.sample.num_samples=64", "--config.diffusion.num_timesteps=20",
          "--config.sample.runs=['ddim:5']", "--config.sample.guidance_sampler=ddim:5",
          "--config.sample.field_grid=5", "--config.model.width=32",
          "--config.sample.same_nfe=['ddim:3']"]
  assert main(args) == 0
  first = capsys.readouterr().err
  files = set(storage.walk_files(workdir))
  assert {"config.json", "results.md", "results.csv"} <= files
  pngs = [f for f in files if f.endswith(".png")]
  assert pngs and all(storage.read_bytes(f"{workdir}/{f}")[:8] == b"\x89PNG\r\n\x1a\n"
                      for f in pngs)
  for name in ("metrics.jsonl", "training.json", "model.json"):
    assert any(f.startswith("models/") and f.endswith("/" + name) for f in files), name
  assert any("/checkpoints/20/" in f for f in files)
  assert any("/tensorboard/events.out" in f for f in files)
  assert "initialised" in first and "step 20/20" in first
  table = storage.read_text(f"{workdir}/results.md")
  # The rerun restores the finished model from the bucket instead of training it again.
  assert main(args) == 0
  second = capsys.readouterr().err
  assert "resumed from step 20" in second and "step 20/20" not in second
  assert storage.read_text(f"{workdir}/results.md").splitlines()[:4] == table.splitlines()[:4]
  assert np.isfinite(json.loads(storage.read_text(
      f"{workdir}/{next(f for f in files if f.endswith('training.json'))}"))["wall_seconds"])


@pytest.mark.parametrize("workdir, message", [
    ("gs://b/run", "'b' is not a GCS bucket name"),
    ("gs://Bad_Bucket/run", "'Bad_Bucket' is not a GCS bucket name"),
    ("gs://no-such-bucket-here/run", "cannot write to gs://no-such-bucket-here/run"),
])
def test_a_bucket_that_cannot_be_written_stops_in_one_line(bucket, capsys, workdir, message):
  from ardiff.cli import main

  assert main(["run", os.path.join(ROOT, "experiments", "spiral.py"),
               f"--workdir={workdir}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0] and err[0].startswith("ardiff: "), err
