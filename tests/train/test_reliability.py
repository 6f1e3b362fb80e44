"""Nothing lost, nothing silent: divergence stops the run without saving, damaged checkpoints
fall back to the previous step, one process per directory, Ctrl-C saves, metrics.jsonl has no
duplicate steps after a resume, and more `steps` extend a cached run.

Cheap by construction: one tiny run (module fixture) is copied for each case, and every
`train` call with the fixture's config reuses its compiled step (`ardiff.train.loop.PROGRAMS`);
only the divergence-by-learning-rate and the extension tests compile a step of their own.
"""

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ardiff import checkpoints, cli, model_cache, workdir as workdir_lib
from ardiff.data.base import batch_indices
from ardiff.errors import CheckpointDamaged, TrainingDiverged, WorkdirLocked
from ardiff.train import Interrupted, read_training_info, train
from tests.train.helpers import assert_same_leaves as _assert_same, tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4  # checkpoints at 2 and 4


def _quiet(_):
  pass


def _steps(directory):
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 4-step run with checkpoints at steps 2 and 4, and the states saved there."""
  process, data, cfg = tiny_setup(steps=STEPS)
  cfg = dataclasses.replace(cfg, checkpoint_every=2, keep_checkpoints=3)
  directory = tmp_path_factory.mktemp("reliability") / "base"
  final = train(process, data.x_train, data.y_train, cfg, directory, log=_quiet)
  saved = {}
  with ocp.CheckpointManager(os.path.join(directory, "checkpoints")) as manager:
    for step in (2, 4):
      saved[step] = manager.restore(step, args=ocp.args.StandardRestore())
  return dict(process=process, data=data, cfg=cfg, dir=str(directory), final=final, saved=saved)


@pytest.fixture
def copy(run, tmp_path):
  """A private copy of the fixture's run directory."""
  directory = str(tmp_path / "run")
  shutil.copytree(run["dir"], directory)
  return directory


def _train(run, directory, log=_quiet, **changes):
  stop_at = changes.pop("stop_at", None)
  cfg = dataclasses.replace(run["cfg"], **changes)
  return train(run["process"], run["data"].x_train, run["data"].y_train, cfg, directory,
               log=log, stop_at=stop_at)


# --- damaged checkpoints ---------------------------------------------------------------------

def _largest_data_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, "default", "ocdbt.process_0", "d", "*")),
             key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _delete(step_dir):
  os.remove(_largest_data_file(step_dir))


def _garbage(step_dir):
  path = _largest_data_file(step_dir)
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).bytes(size))


def _flip(step_dir):
  """A few flipped bytes: orbax restores them silently (as values like 1e33)."""
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(100)
    chunk = bytearray(f.read(8))
    f.seek(100)
    f.write(bytes(b ^ 0xFF for b in chunk))


def _broken_metadata(step_dir):
  with open(os.path.join(step_dir, "_CHECKPOINT_METADATA"), "w") as f:
    f.write("{broken")


def _broken_array_metadata(step_dir):
  with open(os.path.join(step_dir, "default", "_METADATA"), "w") as f:
    f.write("{broken")


def _empty(step_dir):
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


def _nan_without_manifest(step_dir):
  """A step of an older run (no manifest) holding NaN: caught by the finiteness check."""
  root, step = os.path.split(step_dir)
  with ocp.CheckpointManager(root) as manager:
    tree = manager.restore(int(step), args=ocp.args.StandardRestore())
  shutil.rmtree(step_dir)
  tree["params"] = jax.tree.map(lambda a: np.full_like(a, np.nan), tree["params"])
  with ocp.CheckpointManager(root) as manager:
    manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
    manager.wait_until_finished()


DAMAGE = {"truncated": (_truncate, "bytes"), "deleted": (_delete, "missing"),
          "garbage": (_garbage, "changed since it was saved (sha256 differs)"), "flipped": (_flip, "sha256"),
          "metadata": (_broken_metadata, "file _CHECKPOINT_METADATA has 7 bytes"),
          "array_metadata": (_broken_array_metadata, "file default/_METADATA has 7 bytes"),
          "empty": (_empty, "orbax could not restore"),
          "nan_values": (_nan_without_manifest, "non-finite values in ['params']")}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_damaged_latest_step_falls_back_to_the_previous(run, copy, kind):
  damage, reason = DAMAGE[kind]
  ckpt = os.path.join(copy, "checkpoints")
  damage(os.path.join(ckpt, "4"))
  messages = []
  with ocp.CheckpointManager(ckpt) as manager:
    tree, step = checkpoints.restore_latest(manager, None, messages.append)
    assert step == 2
    _assert_same(tree, run["saved"][2])
    assert list(manager.all_steps()) == [2]
  assert len(messages) == 1 and "checkpoint step 4" in messages[0] and reason in messages[0]
  assert "damaged-4" in messages[0] and "trying step 2" in messages[0]
  assert os.path.isdir(os.path.join(ckpt, "damaged-4")) and _steps(ckpt) == [2]


def test_step_without_manifest_is_trusted(run, copy):
  """Checkpoints written before manifests existed restore as before."""
  ckpt = os.path.join(copy, "checkpoints")
  os.remove(os.path.join(ckpt, "4", checkpoints.MANIFEST))
  with ocp.CheckpointManager(ckpt) as manager:
    tree, step = checkpoints.restore_latest(manager, None, _quiet)
  assert step == 4
  _assert_same(tree, run["saved"][4])


def test_fallback_then_resume_equals_the_uninterrupted_run(run, copy):
  """A truncated latest step: training resumes from step 2, saves step 4 afresh (no collision
  with the damaged one) and ends bit for bit where the undamaged run ended; metrics.jsonl
  loses the rows past step 2 (and a torn last line) and has each step once."""
  _truncate(os.path.join(copy, "checkpoints", "4"))
  with open(os.path.join(copy, "metrics.jsonl"), "a") as f:
    f.write('{"step": 5, "lo')  # a row torn by kill -9
  messages = []
  state = _train(run, copy, log=messages.append)
  assert "resumed from step 2 in " + copy in messages
  assert any("dropped 3 row(s) past step 2" in m for m in messages)
  assert int(state.step) == STEPS
  _assert_same(state, run["final"])
  assert _steps(os.path.join(copy, "checkpoints")) == [2, 4]
  rows, original = _rows(copy), _rows(run["dir"])
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  assert [r["loss"] for r in rows] == [r["loss"] for r in original]


def test_no_intact_step_names_the_directory(run, copy):
  ckpt = os.path.join(copy, "checkpoints")
  _truncate(os.path.join(ckpt, "4"))
  _flip(os.path.join(ckpt, "2"))
  with pytest.raises(CheckpointDamaged, match=f"no intact checkpoint in {ckpt}: step.s. 4, 2"):
    _train(run, copy)
  assert sorted(os.listdir(ckpt)) == ["damaged-2", "damaged-4"]


def test_damaged_best_is_replaced_by_the_current_ema(run, tmp_path, monkeypatch):
  """best/ falls back too; with its only step damaged, the restored EMA becomes the best."""
  from ardiff.train import best as training_best

  monkeypatch.setattr(training_best, "validation_loss_fn",
                      lambda *a, **k: (lambda params: {"loss": 1.0}))
  directory = str(tmp_path / "val")
  _train(run, directory, val_examples=40, eval_every=2, stop_at=2)
  assert read_training_info(directory)["best_step"] == 2
  _flip(os.path.join(directory, "best", "2"))
  messages = []
  state = _train(run, directory, log=messages.append, val_examples=40, eval_every=2,
                 stop_at=2)
  assert any("checkpoint step 2 in " in m and "best" in m for m in messages)
  assert any("the EMA of step 2 is the best so far" in m for m in messages)
  with ocp.CheckpointManager(os.path.join(directory, "checkpoints")) as manager:
    saved = manager.restore(2, args=ocp.args.StandardRestore())
  _assert_same(state.ema_params, saved["ema_params"])
  assert checkpoints.verify(os.path.join(directory, "best", "2")) is None


def test_load_model_falls_back_without_moving(run, copy, capsys):
  from ardiff.presets import diffusion_section

  model_cache.write_model_card(copy, "gaussian", ml_collections.ConfigDict(dict(width=32, depth=2)),
                               run["data"], "float32", {"diffusion": diffusion_section()})
  _truncate(os.path.join(copy, "checkpoints", "4"))
  _, params, card = model_cache.load_model(copy)
  assert card["step"] == 2
  _assert_same(params, run["saved"][2]["ema_params"])
  assert "checkpoint step 4" in capsys.readouterr().err
  assert _steps(os.path.join(copy, "checkpoints")) == [2, 4]  # a reader moves nothing


# --- divergence ------------------------------------------------------------------------------

def test_nan_in_the_data_stops_at_the_first_bad_step(run, tmp_path):
  """The first step whose batch holds the NaN example is named, even though the host only
  looks at the end (log and checkpoint intervals longer than the run); step 2's checkpoint
  stays the latest and intact, nothing is saved or logged after it."""
  data = run["data"]
  bad_example = int(batch_indices(run["cfg"].seed, 2, run["cfg"].batch_size,
                                  len(data.x_train))[0])  # first seen at step 3
  assert all(bad_example not in batch_indices(run["cfg"].seed, s, run["cfg"].batch_size,
                                              len(data.x_train)) for s in (0, 1))
  x = data.x_train.copy()
  x[bad_example, 0] = np.nan
  directory = str(tmp_path / "nan")
  cfg = dataclasses.replace(run["cfg"], log_every=100)
  with pytest.raises(TrainingDiverged) as info:
    train(run["process"], x, data.y_train, cfg, directory, log=_quiet)
  message = str(info.value)
  assert message.startswith("training diverged at step 3 (loss nan")
  assert f"index {bad_example}; 1 in step 3's batch" in message
  assert "step 2, stays the latest" in message
  ckpt = os.path.join(directory, "checkpoints")
  assert _steps(ckpt) == [2] and checkpoints.verify(os.path.join(ckpt, "2")) is None
  assert not os.path.exists(os.path.join(directory, "metrics.jsonl"))


def test_huge_learning_rate_stops_before_saving(run, copy):
  """Resumed at step 4 with lr 1e30: the run stops at the first non-finite step, after the
  last finite one it logged, and step 4 stays the latest checkpoint."""
  messages = []
  with pytest.raises(TrainingDiverged) as info:
    _train(run, copy, log=messages.append, steps=12, learning_rate=1e30, checkpoint_every=1)
  logged = [int(m.split()[1].split("/")[0]) for m in messages if m.startswith("step ")]
  losses = [float(m.split("loss ")[1].split()[0]) for m in messages if m.startswith("step ")]
  first_bad = (logged[-1] if logged else STEPS) + 1
  assert str(info.value).startswith(f"training diverged at step {first_bad} (")
  assert "train.learning_rate=1e+30" in str(info.value)
  assert f"step {first_bad - 1}, stays the latest" in str(info.value)
  assert np.isfinite(losses).all() and first_bad <= 12
  # Every checkpoint saved on the way (one per logged step) is finite and verified.
  ckpt = os.path.join(copy, "checkpoints")
  assert _steps(ckpt)[-1] == first_bad - 1
  with ocp.CheckpointManager(ckpt) as manager:
    _, step = checkpoints.restore_latest(manager, None, pytest.fail)
  assert step == first_bad - 1


def test_nonfinite_validation_loss_is_never_the_best(run, tmp_path, monkeypatch):
  """Validation losses nan, 4, nan, 5: the best is step 2's; patience 2 stops at step 4, and
  a rerun with more steps stays stopped."""
  from ardiff.train import best as training_best

  scripted = iter([float("nan"), 4.0, float("nan"), 5.0])
  monkeypatch.setattr(training_best, "validation_loss_fn",
                      lambda *a, **k: (lambda params: {"loss": next(scripted)}))
  directory = str(tmp_path / "val")
  messages = []
  _train(run, directory, log=messages.append, val_examples=40, eval_every=1, patience=2)
  assert "step 1 validation loss nan (no finite best yet)" in messages
  info = read_training_info(directory)
  assert (info["best_step"], info["best_val"], info["stopped_early_at"]) == (2, 4.0, 4)
  assert _steps(os.path.join(directory, "best")) == [2]
  again = _train(run, directory, val_examples=40, eval_every=1, patience=2, steps=8)
  assert int(again.step) == 4


# --- lock ------------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
  import sys, time
  from ardiff.workdir import acquire
  acquire(sys.argv[1], "test holder")
  print("locked", flush=True)
  time.sleep(60)
""")


def test_locked_directory_is_refused_and_freed_by_kill_9(run, tmp_path, capsys):
  directory = str(tmp_path / "locked")
  holder = subprocess.Popen([sys.executable, "-c", HOLDER, directory], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(WorkdirLocked, match=f"in use by pid {holder.pid} on host "):
      _train(run, directory)
    assert not os.path.exists(os.path.join(directory, "checkpoints"))
    # `ardiff run` on a locked work dir: one line, exit code 2, before any work.
    code = cli.main(["run", os.path.join(ROOT, "experiments", "spiral.py"),
                     f"--workdir={directory}", "--no-compile-cache"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"pid {holder.pid}" in err[0], err
    assert not os.path.exists(os.path.join(directory, "config.json"))
  finally:
    holder.kill()  # SIGKILL: the OS drops the flock with the process
    holder.wait()
  key = workdir_lib.acquire(directory, "after the holder died")
  workdir_lib.release(key)


def test_lock_is_reentrant_within_a_process(tmp_path):
  outer = workdir_lib.acquire(tmp_path, "outer")
  with workdir_lib.workdir_lock(tmp_path, "inner"):
    pass
  with open(tmp_path / workdir_lib.LOCK_FILE) as f:
    assert json.load(f)["role"] == "outer"  # still held by the outer caller
  workdir_lib.release(outer)
  assert not workdir_lib._held


# --- Ctrl-C ----------------------------------------------------------------------------------

def test_ctrl_c_saves_and_resumes_bit_identically(run, tmp_path):
  directory = str(tmp_path / "ctrl_c")

  def log(message):
    if message.startswith("step 3/"):
      signal.raise_signal(signal.SIGINT)

  with pytest.raises(Interrupted, match="Ctrl-C: saved a checkpoint at step 3") as info:
    _train(run, directory, log=log)
  assert info.value.exit_code == 130
  assert _steps(os.path.join(directory, "checkpoints")) == [2, 3]
  resumed = _train(run, directory)
  _assert_same(resumed, run["final"])
  assert [r["step"] for r in _rows(directory)] == [1, 2, 3, 4]


def test_second_ctrl_c_stops_at_once(run, tmp_path):
  def log(message):
    if message.startswith("step 1/"):
      signal.raise_signal(signal.SIGINT)
      signal.raise_signal(signal.SIGINT)

  # Python's own handler first: a process started in the background by a non-interactive shell
  # inherits SIGINT ignored (SIG_IGN), and the run must put back whatever it replaced.
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(KeyboardInterrupt):
      _train(run, str(tmp_path / "twice"), log=log)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
  finally:
    signal.signal(signal.SIGINT, before)


# --- the model key and extending a run -------------------------------------------------------

def test_model_key_leaves_out_loop_only_fields(tmp_path):
  config = ml_collections.ConfigDict(dict(model_cache=""))
  base = ml_collections.ConfigDict(dict(steps=100, log_every=10, checkpoint_every=50,
                                        keep_checkpoints=2, learning_rate=1e-3, eval_every=0,
                                        snapshots=[]))

  def where(**changes):
    section = ml_collections.ConfigDict(dict(base.to_dict(), **changes))
    return model_cache.model_dir(config, str(tmp_path), "m", {"width": 8},
                                 model_cache.train_key(section))

  same = where()
  assert where(steps=300, log_every=1, checkpoint_every=7, keep_checkpoints=5) == same
  assert where(learning_rate=2e-3) != same
  assert where(eval_every=5) != same
  assert where(snapshots=[0.5]) != where(snapshots=[0.5], steps=300)  # fractions of steps
  section = ml_collections.ConfigDict(base.to_dict())
  assert (model_cache.model_dir(config, str(tmp_path), "m", {"width": 8},
                                model_cache.train_key(section, keep_steps=True)) != same)
  # A model cached under the old key (the whole train section) is found and used in place.
  legacy = model_cache.train_key(base).legacy
  old = os.path.join(tmp_path, "models", f"m-{model_cache.config_hash({'width': 8}, legacy)}")
  os.makedirs(old)
  assert where() == old and where(steps=300) != old


def test_more_steps_extend_the_run(run, copy):
  messages = []
  state = _train(run, copy, log=messages.append, steps=6)
  assert "resumed from step 4 in " + copy in messages
  assert any("train.steps is now 6 (was 4)" in m and "extending" in m for m in messages)
  assert int(state.step) == 6
  assert [r["step"] for r in _rows(copy)] == list(range(1, 7))
  assert _rows(copy)[:4] == _rows(run["dir"])
  assert read_training_info(copy)["step"] == 6


# --- kill -9 through a process boundary ------------------------------------------------------

KILLED = textwrap.dedent("""
  import dataclasses, sys
  from ardiff.train import train
  from tests.train.helpers import assert_same_leaves as _assert_same, tiny_setup
  process, data, cfg = tiny_setup(steps=4)
  cfg = dataclasses.replace(cfg, checkpoint_every=1, keep_checkpoints=3)
  def log(message):
    print(message, flush=True)
  train(process, data.x_train, data.y_train, cfg, sys.argv[1], log=log)
""")


@pytest.mark.slow  # a JAX subprocess: 27 s measured on a shared 2-core machine (load ~11)
def test_kill_9_during_a_save_resumes_bit_identically(run, tmp_path):
  """A process is killed (SIGKILL) right after step 3 is logged, i.e. during its save; the
  resume in this process (its lock free again) ends where the uninterrupted run ended."""
  directory = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, "-c", KILLED, directory], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    for line in proc.stdout:
      if line.startswith("step 3/"):
        proc.kill()
        break
  finally:
    proc.kill()
    proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL
  resumed = _train(run, directory)
  _assert_same(resumed, run["final"])
  assert [r["step"] for r in _rows(directory)] == [1, 2, 3, 4]
