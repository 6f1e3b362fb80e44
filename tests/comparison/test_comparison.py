"""The comparison machinery against small hand-computed cases: the FLOP budget, the best
sampler per NFE, the series a figure draws, means over seeds, grid rows, labels, the sections a
family is built from, and the reveal row of a long history."""

from __future__ import annotations

import types

import ml_collections
import numpy as np
import pytest

from ardiff.comparison import budget, labels, scoring, tables
from ardiff.comparison.families import Family, chosen, extras, model_section
from ardiff.processes.spec import parse_spec
from ardiff.report import reveal

UNET = Family("unet", "gaussian", "unet", ("diffusion",), "diffusion (UNet)")
DIT = Family("dit", "gaussian_transformer", "ar", ("diffusion",), "diffusion (transformer)",
             (("patch_size", "dit_patch_size"),))
ARDM = Family("ardm", "ardm", "ar", (), "ARDM")


def _row(method, nfe, fd):
  return {"method": method, "NFE": nfe, "fd": fd}


def test_flop_budget_is_tflop_or_reference_steps(monkeypatch):
  # budget_tflop = 2 -> 2e12 FLOPs; else 10 steps x 3e9 FLOPs of the reference = 3e10.
  costs = {"a": 3e9, "b": 5e9}
  monkeypatch.setattr(budget, "train_step_flops", lambda process, *a: costs[process])
  monkeypatch.setattr(budget.model_cache, "model_inputs", lambda process, data: None)
  c = ml_collections.ConfigDict({"train": {"steps": 10}, "budget_tflop": 2.0,
                                 "budget_steps": 10, "budget_reference": "a"})
  monkeypatch.setattr(budget.TrainConfig, "from_config", lambda section: None)
  data = types.SimpleNamespace(y_train=None)
  flops, per_step = budget.flop_budget(c, data, {"a": "a", "b": "b"})
  assert flops == 2e12 and per_step == costs
  c.budget_tflop = 0.0
  assert budget.flop_budget(c, data, {"a": "a", "b": "b"})[0] == 3e10


def test_learning_rate_per_family_or_the_train_sections():
  c = ml_collections.ConfigDict({"train": {"learning_rate": 1e-3},
                                 "learning_rates": {"ardm": 3e-3}})
  assert budget.learning_rate(c, ARDM) == 3e-3 and budget.learning_rate(c, UNET) == 1e-3


def test_best_per_nfe_keeps_the_pareto_front_one_row_per_nfe():
  # (NFE, FD): at 4 the best is 8; 8 NFE buys nothing better (9, 12 > 8); 16 gives 5; 32's 6
  # is beaten by the cheaper 5.
  rows = [_row("x", 4, 10), _row("x", 4, 8), _row("x", 8, 9), _row("x", 8, 12),
          _row("x", 32, 6), _row("x", 16, 5)]
  best = scoring.best_per_nfe(rows)
  assert [(r["NFE"], r["fd"]) for r in best] == [(4, 8), (16, 5)]
  assert scoring.best_per_nfe([]) == []


def test_nfe_series_replaces_each_gaussian_familys_solvers_by_its_best():
  rows = [_row("ARDM, k random pixels/step", 4, 3.0), _row("diffusion (UNet) DDIM", 4, 9.0),
          _row("diffusion (UNet) Heun", 4, 7.0), _row("diffusion (UNet) DDIM", 8, 8.0),
          _row("diffusion (UNet), confidence decoding", 4, 1.0)]
  series = tables.nfe_series(rows, (ARDM, UNET))
  assert list(series) == ["ARDM, k random pixels/step", "diffusion (UNet), confidence decoding",
                          labels.best_label(UNET)]
  assert [(r["NFE"], r["fd"]) for r in series[labels.best_label(UNET)]] == [(4, 7.0)]
  assert tables.by_key(rows, "NFE") == {4: [rows[0], rows[1], rows[2], rows[4]], 8: [rows[3]]}


def test_add_mean_std_over_seeds():
  # fd 1 and 3: mean 2, std sqrt(((1-2)^2 + (3-2)^2) / 2) = 1 (the seeds' own spread).
  row = scoring.add_mean_std({"spec": "s"}, [{"fd": 1.0, "precision": 0.5, "recall": 0.2},
                                             {"fd": 3.0, "precision": 0.5, "recall": 0.4}])
  assert row == pytest.approx({"spec": "s", "fd": 2.0, "fd_std": 1.0, "precision": 0.5,
                               "precision_std": 0.0, "recall": 0.3, "recall_std": 0.1})


def test_keep_grid_keeps_the_nfe_nearest_8_on_a_log_scale():
  grids = {}
  for nfe in (2, 16, 4):  # |ln(2/8)| = 1.39, then |ln(16/8)| = |ln(4/8)| = 0.69: a tie keeps 16
    scoring.keep_grid(grids, "s", nfe, np.full((12,), nfe))
  assert grids["s"][0] == 16 and len(grids["s"][1]) == 10
  scoring.keep_grid(grids, "s", 8, np.full((12,), 8))
  assert grids["s"][0] == 8


def test_method_names_each_specs_series():
  assert labels.method(ARDM, parse_spec("ardm:k=4:order=contiguous")) == \
      "ARDM, k contiguous pixels/step"
  assert labels.method(ARDM, parse_spec("confidence:8:noise=4.5")) == \
      "ARDM, confidence decoding (noise 4.5)"
  assert labels.method(UNET, parse_spec("dpmpp_2m:8")) == "diffusion (UNet) DPM-Solver++ 2M"
  assert labels.best_label(UNET) == "diffusion (UNet), best solver at each NFE"


def test_model_section_sets_the_familys_own_keys_on_a_copy():
  c = ml_collections.ConfigDict({"ar": {"width": 8}, "unet": {"base_channels": 4},
                                 "diffusion": {"num_timesteps": 10}, "dit_patch_size": 2,
                                 "families": ["dit", "ardm"]})
  assert model_section(c, DIT).to_dict() == {"width": 8, "patch_size": 2}
  assert c.ar.to_dict() == {"width": 8}  # the config's own section unchanged
  assert model_section(c, UNET) is c.unet
  assert extras(c, DIT) == {"diffusion": c.diffusion} and extras(c, ARDM) == {}
  assert chosen((UNET, DIT, ARDM), c.families) == (DIT, ARDM)  # the table's order


def test_history_frames_shows_every_kth_step_of_a_long_history():
  # 8 steps of 2 examples shown in 4 frames: steps floor(i 8 / 4) - 1 = 1, 3, 5, 7 of example 0.
  history = np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3)
  process = types.SimpleNamespace(sample_history=lambda params, key, labels, spec: history)
  frames = reveal.history_frames(process, None, None, None, "s", 4)
  np.testing.assert_array_equal(frames, history[[1, 3, 5, 7], 0])
  np.testing.assert_array_equal(reveal.history_frames(process, None, None, None, "s", 8),
                                history[:, 0])
