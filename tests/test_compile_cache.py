"""The persistent compilation cache: where it lives, how it is switched off, and that a second
process loads its programs from it instead of compiling them (JAX's own hit/miss events)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from ardiff.cli import main
from ardiff.compile_cache import ENV_VAR, cache_directory, enable_compilation_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_KEYS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
               "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture
def jax_config():
  """Starts from no cache directory (the test session has its own, tests/conftest.py) and puts
  the settings back, so that a failing test cannot turn a cache on or off for the tests after
  it (nothing compiles between the update and the restore)."""
  saved = {k: getattr(jax.config, k) for k in CONFIG_KEYS}
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)


@pytest.mark.parametrize("value", ["0", "off", "OFF", "", "  ", "false", "no", "None"])
def test_env_var_switches_it_off(value):
  assert cache_directory({ENV_VAR: value, "XDG_CACHE_HOME": "/xdg"}) is None


def test_env_var_names_the_directory(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert cache_directory({ENV_VAR: "/some/dir", "XDG_CACHE_HOME": "/xdg"}) == "/some/dir"
  assert cache_directory({ENV_VAR: "rel/dir"}) == str(tmp_path / "rel" / "dir")


def test_default_directory_honours_xdg_cache_home(monkeypatch, tmp_path):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cache_directory({"XDG_CACHE_HOME": "/xdg/cache"}) == "/xdg/cache/ardiff/jax"
  home_default = str(tmp_path / "home" / ".cache" / "ardiff" / "jax")
  assert cache_directory({}) == home_default
  # The XDG spec says an empty or relative XDG_CACHE_HOME is to be ignored.
  assert cache_directory({"XDG_CACHE_HOME": ""}) == home_default
  assert cache_directory({"XDG_CACHE_HOME": "relative"}) == home_default


def test_off_leaves_jax_cache_dir_unset(monkeypatch, jax_config):
  assert os.environ[ENV_VAR] == "off"  # tests/conftest.py: no test writes to the user's cache
  assert enable_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None
  monkeypatch.setenv(ENV_VAR, "0")
  assert enable_compilation_cache() is None
  assert jax.config.jax_compilation_cache_dir is None


def test_unwritable_directory_warns_and_stays_off(tmp_path, capsys, jax_config):
  blocker = tmp_path / "file"
  blocker.write_text("")
  assert enable_compilation_cache(str(blocker / "jax")) is None
  assert jax.config.jax_compilation_cache_dir is None
  err = capsys.readouterr().err
  assert "compilation cache off, cannot create" in err and str(blocker / "jax") in err
  assert ENV_VAR in err


def test_no_compile_cache_flag(monkeypatch, tmp_path, capsys, jax_config):
  monkeypatch.setenv(ENV_VAR, str(tmp_path / "cache"))
  # Stops at the missing model, after the cache would have been switched on.
  assert main(["sample", str(tmp_path / "missing"), "--spec=ddim:5", f"--out={tmp_path}/x.npz",
               "--no-compile-cache"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert jax.config.jax_compilation_cache_dir is None
  assert not (tmp_path / "cache").exists()


# Goes through the CLI entry point (which must switch the cache on before anything compiles),
# then compiles one program and reports JAX's persistent-cache events for it.
PROBE = textwrap.dedent("""
  import json, sys
  import jax, jax.numpy as jnp
  from ardiff.cli import main

  assert main(["sample", sys.argv[1], "--spec=ddim:5", "--out=" + sys.argv[2]]) == 2
  events = []
  jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
  def f(x):
    return jnp.tanh(x @ x.T).sum(axis=0) * 3.0
  x = jax.device_put(jnp.arange(12.0).reshape(3, 4))  # created before the listener counts
  events.clear()
  y = jax.jit(f).lower(x).compile()(x)
  print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                    "hits": events.count("/jax/compilation_cache/cache_hits"),
                    "misses": events.count("/jax/compilation_cache/cache_misses"),
                    "y": [float(v) for v in y]}))
""")


def _probe(tmp_path, cache):
  env = {**os.environ, ENV_VAR: str(cache), "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "missing"),
                        str(tmp_path / "x.npz")], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_the_program_from_the_cache(tmp_path):
  cache = tmp_path / "cache"
  first = _probe(tmp_path, cache)
  assert first["dir"] == str(cache)
  assert (first["hits"], first["misses"]) == (0, 1)  # compiled, then written
  files = sorted(p.name for p in cache.iterdir())
  assert any(name.startswith("jit_f-") for name in files), files
  second = _probe(tmp_path, cache)
  assert (second["hits"], second["misses"]) == (1, 0)  # loaded, not compiled
  assert sorted(p.name for p in cache.iterdir()) == files
  assert second["y"] == first["y"]
