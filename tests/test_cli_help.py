"""What `ardiff --version` and the help pages tell a newcomer (in process: no training)."""

import os
import sys
import tomllib

import jax
import pytest

import ardiff
from ardiff.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exit_output(argv, capsys) -> str:
  """stdout of an argparse action that prints and exits 0 (--version, --help)."""
  with pytest.raises(SystemExit) as stop:
    main(argv)
  assert stop.value.code == 0
  return capsys.readouterr().out


def test_version_is_the_package_version_with_its_jax(capsys):
  out = _exit_output(["--version"], capsys)
  python = sys.version.split()[0]
  assert out == f"ardiff {ardiff.__version__} (jax {jax.__version__}, Python {python})\n"
  # One version: the package's, which the build reads (pyproject.toml names no other).
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)
  assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
  assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ardiff.__version__"}


@pytest.mark.parametrize("argv, opening", [(["--help"], "The ardiff command"),
                                           (["run", "--help"], "Run an experiment file")])
def test_help_opens_with_a_sentence_saying_what_it_does(argv, opening, capsys):
  """The first paragraph after the usage lines is a sentence (not a title such as "Command
  line."), and `run --help` keeps the override and bad-input paragraphs."""
  out = _exit_output(argv, capsys)
  first = out.split("\n\n")[1]
  assert first.startswith(opening) and first.rstrip().endswith(".") and len(first.split()) >= 10
  assert "--config.KEY=VALUE" in out and "exit status 2" in out
