"""Bad input that shows only on a given machine or in a run under way, one line each: exit 2
(SIGTERM: 143, as training), a message naming the key or the path, no traceback, and nothing
on disk changed or lost.

The companion of tests/test_bad_inputs.py, whose table holds what a command line shows on any
machine. Here: a batch that does not split over this machine's devices, a read-only work dir,
a full disk during training, a checkpoint of another model, SIGTERM while sampling. Each case
fakes the machine (a device count, a failing write) rather than needing it, and trains nothing
it can avoid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re

import jax
import ml_collections
import numpy as np
import pytest

from ardiff import parallel, preflight
from ardiff.configs import ConfigError
from ardiff.workdir import LOCK_FILE
from tests.test_bad_inputs import (CARD_T50, SPIRAL, cli_main, no_run, snapshot,  # noqa: F401
                                   workdir)

RUN = ["run", SPIRAL, "--workdir={w}"]


def assert_one_line(argv, pattern, workdir, capsys, code=2):
  """`ardiff argv` exits `code` with one line matching `pattern` and leaves the files under
  the work dir's parent as they were."""
  before = snapshot(workdir.parent)
  assert cli_main([a.format(w=workdir) for a in argv]) == code
  out, err = capsys.readouterr()
  assert out == "" and "Traceback" not in err
  assert err.count("\n") == 1 and err.startswith("ardiff: "), err
  assert re.search(pattern, err), err
  assert snapshot(workdir.parent) == before


# ---- case 1: a batch that does not split over the devices, found before config.json.

@pytest.mark.parametrize("batch,devices,processes,accum,pattern", [
    (63, 2, 1, 1, r"'train.batch_size': 63 must be divisible by the number of devices \(2\)"),
    (64, 8, 3, 1, r"'train.batch_size': 64 must be divisible by the number of processes \(3\)"),
    (64, 8, 1, 3, r"'train.grad_accum': 3 micro-batches must divide each device's 8 examples"),
])
def test_a_batch_that_does_not_split_is_refused(batch, devices, processes, accum, pattern):
  with pytest.raises(ConfigError, match=pattern):
    parallel.check_batch_split(batch, devices, processes, accum)
  for fits in [(64, 8, 2, 4), (63, 1, 1, 1), (6, 3, 3, 2)]:
    parallel.check_batch_split(*fits)


def test_preflight_checks_every_train_section_by_its_key():
  config = ml_collections.ConfigDict({"train": {"batch_size": 64},
                                      "spiral": {"train": {"batch_size": 63, "grad_accum": 1}}})
  preflight.check_run(config, "unused", devices=1)
  with pytest.raises(ConfigError, match=r"'spiral.train.batch_size': 63 .* devices \(2\)"):
    preflight.check_run(config, "unused", devices=2)


def test_run_on_two_devices_stops_before_config_json(workdir, no_run, capsys, monkeypatch):
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  assert_one_line(RUN + ["--config.train.batch_size=63"],
                  r"config error: config key 'train.batch_size': 63 .* devices \(2\)",
                  workdir, capsys)


# ---- case 4: a work dir that cannot be written.

def test_read_only_work_dir(workdir, no_run, capsys):
  os.chmod(workdir, 0o555)
  try:
    if os.access(workdir, os.W_OK):  # root writes through the mode bits
      pytest.skip("chmod 0o555 does not stop this user (root) from writing")
    assert_one_line(RUN, r"cannot write to the work dir .*work: Permission denied \(.*"
                    + re.escape(LOCK_FILE), workdir, capsys)
  finally:
    os.chmod(workdir, 0o755)


def test_read_only_mount(workdir, no_run, capsys, monkeypatch):
  """The lock file is the first file a run writes; on a read-only mount its open fails."""
  from ardiff import workdir as workdir_lib

  real_open = os.open

  def read_only(path, *args, **kwargs):
    if os.fspath(path).endswith(LOCK_FILE):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(workdir_lib.os, "open", read_only)
  assert_one_line(RUN, r"cannot write to the work dir .*work: Read-only file system", workdir,
                  capsys)


def test_a_config_json_that_cannot_be_written_leaves_the_old_one(workdir, no_run, capsys,
                                                                  monkeypatch):
  """The new config.json fails to write (a full disk): the old one is put back, not left as
  config.<time>.json with none in its place."""
  from ardiff import storage

  real = storage.write_atomic

  def full(path, *args, **kwargs):
    if os.fspath(path).endswith("config.json"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real(path, *args, **kwargs)

  monkeypatch.setattr(storage, "write_atomic", full)
  before = snapshot(workdir)
  assert cli_main([a.format(w=workdir) for a in RUN]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert re.search(r"cannot write .*work/config.json: No space left on device", err), err
  after = snapshot(workdir)
  after.pop(str(workdir / LOCK_FILE))  # the lock file stays, on purpose (ardiff.workdir)
  assert after == before


# ---- case 7: more steps than the model was trained with (the refusals: the table's
# sample-steps-* cases); its own number of timesteps is still allowed.

def test_a_model_samples_with_up_to_its_own_timesteps(tmp_path):
  from ardiff.model_cache import load_process

  (tmp_path / "model.json").write_text(CARD_T50)
  process, _ = load_process(str(tmp_path))
  assert process.num_timesteps == 50
  assert process.nfe("ddim:50") == 50 and process.nfe("heun:50") == 99
  with pytest.raises(ValueError, match="51 steps is more than this model's 50"):
    process.nfe("ddpm:51")


# ---- case 9: resuming in a directory whose checkpoint is another model's.

def _saved(tmp_path, tree):
  """A checkpoint manager of tmp_path/checkpoints holding `tree` at step 4 (as training saves)."""
  import orbax.checkpoint as ocp

  from ardiff import checkpoints

  manager = ocp.CheckpointManager(tmp_path / "checkpoints",
                                  options=ocp.CheckpointManagerOptions(create=True))
  checkpoints.save(manager, 4, tree, chief=True)
  return manager


@pytest.mark.parametrize("change,pattern", [
    (lambda t: {**t, "emb": np.zeros((11, 4), np.float32)},  # one more class
     r"\['emb'\] has shape \(10, 4\) there, \(11, 4\) in this model"),
    (lambda t: {**t, "head": np.zeros(3, np.float32)}, r"\['head'\] is not in it"),
    (lambda t: {"emb": t["emb"]}, r"it has \['dense'\]\['kernel'\], which this model has not"),
])
def test_a_checkpoint_of_another_model_is_refused_and_kept(tmp_path, change, pattern):
  from ardiff import checkpoints
  from ardiff.errors import CheckpointMismatch

  tree = {"emb": np.ones((10, 4), np.float32), "dense": {"kernel": np.ones((4, 2), np.float32)}}
  logged = []
  with _saved(tmp_path, tree) as manager:
    before = snapshot(tmp_path)
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), change(tree))
    with pytest.raises(CheckpointMismatch, match="step 4 in .* belongs to a different model: "
                       + pattern + "; nothing was moved") as info:
      checkpoints.restore_latest(manager, target, logged.append)
    assert "\n" not in str(info.value) and logged == []
    assert snapshot(tmp_path) == before  # not moved aside as damaged
    same = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    restored, step = checkpoints.restore_latest(manager, same, logged.append)
  assert step == 4 and np.array_equal(restored["emb"], tree["emb"])


# ---- case 10: a tfds dataset that is not prepared, in one line without tfds' warnings.

def test_tfds_not_prepared_is_one_line_without_absl_warnings(tmp_path, caplog):
  pytest.importorskip("tensorflow_datasets")
  from ardiff.data.tfds_source import check_prepared
  from ardiff.errors import DataNotFound

  with caplog.at_level(logging.WARNING), pytest.raises(DataNotFound) as info:
    check_prepared("cifar10", str(tmp_path))
  assert re.match(r"tfds dataset 'cifar10' is not prepared: searched .*/cifar10/", str(info.value))
  assert [r.getMessage() for r in caplog.records if r.name == "absl"] == []
  assert os.listdir(tmp_path) == []


# ---- case 8: the disk fills up during training.

NO_SPACE = os.strerror(errno.ENOSPC)
# orbax's form: TensorStore's error in a background write, raised again by the save.
ORBAX_FULL = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/4.orbax-'
                        'checkpoint-tmp/_sharding": Failed to write 32396 bytes to file 9: No '
                        "space left on device [os_error_code='28']")


@pytest.mark.parametrize("writer,failing_call,error", [
    ("checkpoint", 2, ORBAX_FULL),
    ("checkpoint", 2, OSError(errno.ENOSPC, NO_SPACE, "/w/checkpoints/4")),
    ("metrics", 3, OSError(errno.ENOSPC, NO_SPACE, "/w/metrics.jsonl")),
    ("summaries", 2, OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), "/w/tensorboard")),
])
def test_a_full_disk_stops_training_in_one_line_keeping_the_last_checkpoint(
    tmp_path, monkeypatch, writer, failing_call, error):
  """A write fails for want of space after the checkpoint of step 2 (the checkpoint of step
  4, the metrics row of step 3, the TensorBoard flush before step 4's checkpoint): one line
  naming the disk and step 2, which stays intact for the rerun."""
  from ardiff import checkpoints, storage, summaries
  from ardiff.errors import DiskFull
  from ardiff.train import records, train
  from tests.train.helpers import tiny_setup

  owner, name = {"checkpoint": (checkpoints.ocp.CheckpointManager, "save"),
                 "metrics": (records, "append_metrics"),
                 "summaries": (summaries.Summaries, "flush")}[writer]
  real, calls = getattr(owner, name), []

  def full(*args, **kwargs):
    calls.append(args)
    if len(calls) == failing_call:
      raise error
    return real(*args, **kwargs)

  monkeypatch.setattr(owner, name, full)
  process, data, cfg = tiny_setup(steps=6)
  cfg = dataclasses.replace(cfg, checkpoint_every=2)
  with pytest.raises(DiskFull) as info:
    train(process, data.x_train, data.y_train, cfg, str(tmp_path), log=lambda line: None)
  ckpt = tmp_path / "checkpoints"
  assert str(info.value) == (
      f"no space left on the disk at {storage.mount_point(tmp_path)} while writing {tmp_path}: "
      f"the last intact checkpoint, step 2 in {ckpt}, is kept; free space and rerun the same "
      "command to resume")
  assert checkpoints.last_intact_step(str(ckpt)) == 2 and not (ckpt / "4").exists()


def test_disk_full_is_told_by_errno_or_by_tensorstore_words():
  from ardiff.storage import is_disk_full

  chained = RuntimeError("save failed")
  chained.__cause__ = OSError(errno.ENOSPC, NO_SPACE)
  for full in (ORBAX_FULL, chained, OSError(errno.EDQUOT, "quota"), OSError(errno.ENOSPC, "")):
    assert is_disk_full(full), full
  for other in (OSError(errno.EACCES, os.strerror(errno.EACCES)), ValueError("RESOURCE_EXHAUSTED"),
                None):
    assert not is_disk_full(other), other


def test_a_save_holds_orbax_logs_back_on_a_full_disk_only(tmp_path, monkeypatch, caplog):
  """orbax logs a traceback per failed background write before the save raises: on a full
  disk they are dropped (the caller's one line says it), for any other error printed."""
  from ardiff import checkpoints

  def save(self, *args, **kwargs):
    logging.getLogger("absl").error("background write failed (a traceback per array)")
    raise failure

  with _saved(tmp_path, {"w": np.ones(2, np.float32)}) as manager:
    monkeypatch.setattr(checkpoints.ocp.CheckpointManager, "save", save)
    for failure, printed in [(ORBAX_FULL, []), (ValueError("bad sharding"),
                                                ["background write failed (a traceback per array)"])]:
      caplog.clear()
      with pytest.raises(ValueError):
        checkpoints.save(manager, 6, {"w": np.ones(2, np.float32)}, chief=True)
      assert [r.getMessage() for r in caplog.records if r.name == "absl"] == printed


# ---- case 11: SIGTERM while `ardiff sample` starts up or samples: one line, exit 143 at once.

@pytest.mark.parametrize("while_writing", [False, True])
def test_sigterm_says_what_was_written(while_writing, capsys):
  """The watcher answers a SIGTERM at once, except during the writing of the output, which
  it lets finish first (no half-written file) and then names."""
  import signal
  import time

  from ardiff.sigterm import StopOnSigterm

  exits = []
  with StopOnSigterm("sampling", "s.npz", exit=exits.append) as stop:
    with stop.writing(["s.npz", "s.png"]) if while_writing else contextlib.nullcontext():
      # To the watcher itself: in this process threads started before the guard (pytest's,
      # jax's) do not block SIGTERM, and a signal to the process could end it there.
      signal.pthread_kill(stop._watcher.ident, signal.SIGTERM)
      time.sleep(0.3)
      assert exits == ([] if while_writing else [143])
    stop._watcher.join(10)
  assert exits == [143]
  said = ("stopped sampling after writing s.npz, s.png" if while_writing else
          "stopped sampling before writing s.npz; nothing was written and nothing lost")
  assert capsys.readouterr().err.startswith(f"ardiff: SIGTERM: {said}")


def test_sigterm_at_sample_start_up_exits_143_with_one_line(tmp_path):
  """The real process (the exit status is the point): SIGTERM as soon as the guard blocks it,
  while jax is still being imported."""
  import signal
  import subprocess
  import sys
  import time

  from tests.test_bad_inputs import ROOT

  (tmp_path / "model").mkdir()
  (tmp_path / "model" / "model.json").write_text(CARD_T50)
  env = dict(os.environ, PYTHONPATH=ROOT, ARDIFF_DEBUG="")
  proc = subprocess.Popen([sys.executable, "-m", "ardiff.cli", "sample", str(tmp_path / "model"),
                           "--spec=ddim:5", f"--out={tmp_path / 's.npz'}"], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  status = f"/proc/{proc.pid}/status"
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:  # SigBlk: the main thread's blocked signals, in hex
    lines = dict(line.split(":\t", 1) for line in open(status).read().splitlines()
                 if ":\t" in line)
    if int(lines["SigBlk"], 16) >> (signal.SIGTERM - 1) & 1:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err
  assert out == "" and err == (f"ardiff: SIGTERM: stopped sampling before writing "
                               f"{tmp_path / 's.npz'}; nothing was written and nothing lost "
                               "(rerun the same command)\n")
  assert sorted(os.listdir(tmp_path)) == ["model"]
