"""Training: resume equals uninterrupted, SIGTERM saves, 1 device equals 8 devices."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from ardiff.data.base import batch_indices
from ardiff.train import Preempted, TrainConfig, train
from tests._train_helpers import tiny_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_batch_indices_depend_on_seed_and_step_only():
  a = batch_indices(3, 17, 10, 95)
  np.testing.assert_array_equal(a, batch_indices(3, 17, 10, 95))
  assert not np.array_equal(a, batch_indices(4, 17, 10, 95))
  # One epoch covers every example exactly once.
  epoch = np.concatenate([batch_indices(0, s, 10, 50) for s in range(5)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(50))


def test_resume_gives_identical_params(tmp_path):
  process, data, cfg = tiny_setup(steps=8)
  straight = train(process, data.x_train, data.y_train, cfg, tmp_path / "a", log=lambda m: None)
  half = train(process, data.x_train, data.y_train, cfg, tmp_path / "b", stop_at=4,
               log=lambda m: None)
  assert int(half.step) == 4
  resumed = train(process, data.x_train, data.y_train, cfg, tmp_path / "b", log=lambda m: None)
  assert int(resumed.step) == 8
  for x, y in zip(_leaves(straight), _leaves(resumed)):
    np.testing.assert_array_equal(x, y)
  # metrics.jsonl holds one line per step across both runs.
  steps = [json.loads(line)["step"] for line in open(tmp_path / "b" / "metrics.jsonl")]
  assert steps == list(range(1, 9))


def test_finished_run_is_restored_not_retrained(tmp_path):
  process, data, cfg = tiny_setup(steps=3)
  first = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  messages = []
  again = train(process, data.x_train, data.y_train, cfg, tmp_path, log=messages.append)
  assert any("resumed from step 3" in m for m in messages)
  assert not any(m.startswith("step ") for m in messages)
  for x, y in zip(_leaves(first), _leaves(again)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_saves_and_stops(tmp_path):
  process, data, cfg = tiny_setup(steps=20)

  def log(message):
    if message.startswith("step 5/"):
      signal.raise_signal(signal.SIGTERM)

  with pytest.raises(Preempted, match="step 5"):
    train(process, data.x_train, data.y_train, cfg, tmp_path, log=log)
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert ckpts[-1] == 5
  resumed = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  assert int(resumed.step) == 20


def test_bad_train_config_names_the_key():
  with pytest.raises(ValueError, match="train.steps"):
    TrainConfig(steps=-1)
  with pytest.raises(ValueError, match="train.ema_decay"):
    TrainConfig(ema_decay=1.5)


def test_batch_not_divisible_by_devices_is_rejected(tmp_path):
  from ardiff import parallel

  class FakeMesh:
    devices = np.zeros(8)

  with pytest.raises(ValueError, match="divisible by the number of devices"):
    parallel.check_global_batch(12, FakeMesh())


SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from ardiff import parallel
  from ardiff.train import train
  from tests._train_helpers import tiny_setup
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for n in (1, 8):
    process, data, cfg = tiny_setup(steps=4)
    losses = []
    def log(m, losses=losses):
      if m.startswith("step "):
        losses.append(float(m.split("loss ")[1].split()[0]))
    mesh = parallel.data_mesh(jax.devices()[:n])
    state = train(process, data.x_train, data.y_train, cfg, sys.argv[1] + f"/{n}", log=log,
                  mesh=mesh)
    leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
    out[n] = {"losses": losses, "params": np.concatenate(leaves).tolist()}

  print("RESULT" + json.dumps(out))
""")


def test_one_device_equals_eight_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  one, eight = result["1"], result["8"]
  assert len(one["losses"]) == 4
  np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one["params"], eight["params"], rtol=1e-4, atol=1e-6)
