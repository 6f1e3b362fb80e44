"""One voice per job: process 0 prints, writes metrics, TensorBoard files, figures and tables;
any other process of a multi-host job stays silent and writes none of them. A terminal gets a
progress bar with an ETA, a file or pipe plain lines."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from ardiff import console
from ardiff.report import plots, write_results
from ardiff.train import train
from tests.train.helpers import tiny_setup


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_log_prints_on_process_zero_only(capsys, monkeypatch):
  console.log("hello from the chief")
  assert capsys.readouterr().err == "hello from the chief\n"
  monkeypatch.setattr(console, "is_chief", lambda: False)
  console.log("hello from worker 1")
  assert capsys.readouterr().err == ""


def test_progress_bar_only_on_a_terminal(monkeypatch):
  redirected = io.StringIO()
  monkeypatch.setattr("sys.stderr", redirected)
  with console.progress(10) as bar:
    bar.update(3)
  assert redirected.getvalue() == ""  # a file or pipe: no bar (the loop's lines carry ETA)
  terminal = _Terminal()
  monkeypatch.setattr("sys.stderr", terminal)
  with console.progress(10, initial=2) as bar:
    bar.update(3)
    bar.refresh()  # tqdm redraws at most every 0.1 s on its own
  shown = terminal.getvalue()
  assert "5/10" in shown and "step" in shown and "<" in shown  # count, unit, ETA
  monkeypatch.setattr(console, "is_chief", lambda: False)
  terminal = _Terminal()
  monkeypatch.setattr("sys.stderr", terminal)
  with console.progress(10) as bar:
    bar.update(3)
  assert terminal.getvalue() == ""


@pytest.mark.parametrize("chief", [True, False])
def test_training_writes_and_speaks_only_on_process_zero(tmp_path, capsys, monkeypatch, chief):
  monkeypatch.setattr(console, "is_chief", lambda: chief)
  process, data, cfg = tiny_setup(steps=2)
  train(process, data.x_train, data.y_train, cfg, tmp_path / "run")
  err = capsys.readouterr().err
  written = sorted(os.listdir(tmp_path / "run"))
  plots.image_grid(np.zeros((2, 2, 2, 1)), str(tmp_path / "grid.png"), close=True)
  write_results(str(tmp_path), [{"a": 1}], "table")
  if chief:
    assert "initialised" in err and "step 2/2" in err
    assert {"metrics.jsonl", "tensorboard", "training.json"} <= set(written)
    assert (tmp_path / "grid.png").exists() and (tmp_path / "results.md").exists()
  else:
    assert err == ""
    assert not {"metrics.jsonl", "tensorboard", "training.json"} & set(written)
    assert not (tmp_path / "grid.png").exists() and not (tmp_path / "results.md").exists()
