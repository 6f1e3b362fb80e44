"""Two local JAX processes x 4 CPU devices train exactly like one process with 8 devices.

The pair finds each other through `ardiff.distributed.maybe_initialize` (JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; cross-process CPU collectives are gloo, jax's default), each
feeds only its half of every global batch, and they share one work dir: both take part in every
orbax save, and only process 0 writes metrics.jsonl. Preemption is coordinated: process 1 alone
gets SIGTERM (at step 2), yet both agree on one later step, save it together, stop with
Preempted (exit 143 through the CLI) and resume from it. The reference is a third process with
8 devices trained straight through.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tests._xla import with_device_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 8
SIGTERM_AT = 2
TIMEOUT_S = 240  # the whole test; a hung collective or barrier fails instead of blocking CI

WORKER = textwrap.dedent("""
  import json, sys
  from ardiff.distributed import maybe_initialize
  initialised = maybe_initialize()
  import jax, numpy as np
  from ardiff.train import train
  from tests.train.helpers import tiny_setup
  import dataclasses, os, signal, time
  from ardiff.train import Preempted
  workdir, steps, sigterm_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
  assert jax.device_count() == 8, jax.devices()
  process, data, cfg = tiny_setup(steps=steps)
  messages, preempted = [], None

  def log(message):
    messages.append(message)
    # Process 1 alone is told to stop, as a spot VM's worker would be; it then dawdles so the
    # notice reaches the coordination service while both are still training.
    if sigterm_at and jax.process_index() == 1 and message.startswith(f"step {sigterm_at}/"):
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(2.0)

  if sigterm_at:
    try:
      train(process, data.x_train, data.y_train, cfg, workdir, log=log)
    except Preempted as e:
      preempted = str(e)
  state = train(process, data.x_train, data.y_train, cfg, workdir, log=messages.append)
  # A divergence is seen by every host at the same step (replicated loss and parameters):
  # all stop there together, none is left waiting in a collective.
  from ardiff.errors import TrainingDiverged
  diverged = None
  try:
    train(process, data.x_train, data.y_train,
          dataclasses.replace(cfg, learning_rate=1e8, steps=6), workdir + "-nan",
          log=lambda m: None)
  except TrainingDiverged as e:
    diverged = str(e).split(" (")[0]
  leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
  # 7 samples, not a multiple of 2 processes x 4 devices: each process draws its share.
  labels = np.array([0, 1, 2, 3, 0, 1, 2], np.int32)
  sampler = dataclasses.replace(process, data_shape=(2,))  # points in the plane
  samples = sampler.sample(state.ema_params, jax.random.key(7), labels, "ddim:5")
  print("RESULT" + json.dumps({
      "initialised": initialised, "process_index": jax.process_index(),
      "process_count": jax.process_count(), "local_devices": jax.local_device_count(),
      "step": int(state.step), "messages": messages, "preempted": preempted,
      "samples": np.asarray(samples).tolist(), "diverged": diverged,
      "params": np.concatenate(leaves).tolist()}))
""")


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(num_devices: int, **extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(XLA_FLAGS=with_device_count(num_devices),
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **extra)
  return env


def _run_all(jobs: dict[str, tuple[list[str], dict[str, str]]], logdir) -> dict[str, dict]:
  """Start every job at once, wait for all under one deadline; on a hang or failure kill the
  rest and fail with the job's stderr tail. Output goes to files (gloo is chatty on stdout)."""
  procs, files = {}, {}
  with contextlib.ExitStack() as stack:
    for name, (args, env) in jobs.items():
      out = stack.enter_context(open(logdir / f"{name}.out", "w+"))
      err = stack.enter_context(open(logdir / f"{name}.err", "w+"))
      files[name] = (out, err)
      procs[name] = subprocess.Popen([sys.executable, "-c", WORKER, *args], env=env, cwd=ROOT,
                                     stdout=out, stderr=err, text=True)
    deadline = time.monotonic() + TIMEOUT_S
    try:
      for name, proc in procs.items():
        remaining = max(deadline - time.monotonic(), 1.0)
        try:
          proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
          pytest.fail(f"{name} still running after {TIMEOUT_S}s:\n{_tail(files[name][1])}")
        if proc.returncode != 0:
          pytest.fail(f"{name} exited with {proc.returncode}:\n{_tail(files[name][1])}")
    finally:
      for proc in procs.values():
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    results = {}
    for name, (out, _) in files.items():
      out.seek(0)
      results[name] = json.loads(out.read().split("RESULT", 1)[1])
  return results


def _tail(f, n: int = 3000) -> str:
  f.seek(0)
  return f.read()[-n:]


def _metrics(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


@pytest.mark.multiprocess
@pytest.mark.slow  # ~60 s on a 2-core CPU: three JAX processes start and compile
def test_two_processes_equal_one_process_with_eight_devices(tmp_path):
  shared, single = tmp_path / "shared", tmp_path / "single"
  address = f"127.0.0.1:{_free_port()}"
  jobs = {
      f"p{i}": ([str(shared), str(STEPS), str(SIGTERM_AT)],
                _env(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                     JAX_PROCESS_ID=str(i)))
      for i in range(2)}
  jobs["single"] = ([str(single), str(STEPS), "0"], _env(8))
  results = _run_all(jobs, tmp_path)
  p0, p1, ref = results["p0"], results["p1"], results["single"]

  assert [(r["initialised"], r["process_index"], r["process_count"], r["local_devices"])
          for r in (p0, p1, ref)] == [(True, 0, 2, 4), (True, 1, 2, 4), (False, 0, 1, 8)]
  assert p0["step"] == p1["step"] == ref["step"] == STEPS
  # Only process 1 was signalled; both stopped at the same agreed step and saved it together.
  stops = [r["preempted"] for r in (p0, p1)]
  assert all(stop and stop.startswith("SIGTERM: saved a checkpoint at step ") for stop in stops)
  stop_step = int(stops[0].split("at step ")[1].split()[0])
  assert stops[0] == stops[1] and SIGTERM_AT < stop_step < STEPS, stops
  for r in (p0, p1):
    assert f"resumed from step {stop_step} in {shared}" in r["messages"]
  saved = sorted(int(d) for d in os.listdir(shared / "checkpoints") if d.isdigit())
  assert saved == [stop_step, STEPS]
  # Each process wrote its own shards into the same checkpoint.
  for i in range(2):
    assert (shared / "checkpoints" / str(STEPS) / "default" / f"ocdbt.process_{i}").is_dir()

  # metrics.jsonl: written once (process 0 only), one line per step across stop and resume.
  multi, straight = _metrics(shared), _metrics(single)
  assert [m["step"] for m in multi] == [m["step"] for m in straight] == list(range(1, STEPS + 1))
  losses = [m["loss"] for m in multi]
  ref_losses = [m["loss"] for m in straight]
  print("2x4 losses", losses, "\n1x8 losses", ref_losses)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose([m["grad_norm"] for m in multi],
                             [m["grad_norm"] for m in straight], rtol=1e-5, atol=1e-6)
  # Process 1 logged the same (replicated) losses as process 0.
  for r in (p0, p1):
    logged = [float(m.split("loss ")[1].split()[0]) for m in r["messages"]
              if m.startswith("step ")]
    np.testing.assert_allclose(logged, ref_losses, atol=1e-4)

  # learning_rate=1e8: every process stops at the same step with TrainingDiverged.
  assert p0["diverged"] and p0["diverged"] == p1["diverged"] == ref["diverged"], (
      p0["diverged"], p1["diverged"], ref["diverged"])
  assert p0["diverged"].startswith("training diverged at step ")

  # Sampling across hosts: both processes return all 7 samples, the same as one 8-device
  # process draws (per-example keys: who draws an example does not change it).
  s0, s1, s_ref = (np.asarray(r["samples"]) for r in (p0, p1, ref))
  assert s0.shape == s_ref.shape == (7, 2)
  np.testing.assert_array_equal(s0, s1)
  np.testing.assert_allclose(s0, s_ref, rtol=1e-3, atol=1e-3)  # params agree to ~1e-5

  # Replicated params: both processes hold the same values, equal to the 8-device run's.
  a, b, c = (np.asarray(r["params"]) for r in (p0, p1, ref))
  np.testing.assert_array_equal(a, b)
  print("max |params 2x4 - 1x8|", np.max(np.abs(a - c)), "of max |param|", np.max(np.abs(c)))
  np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-6)
