"""Training budgets and convergence: FLOP budgets, the held-out split, early stopping on the
validation loss with the best EMA kept, budget snapshots, and their resumption."""

import dataclasses
import json

import pytest

from ardiff.train import best as training_best
from ardiff.configs.validation import ConfigError
from ardiff.train import TrainConfig, read_training_info, snapshot_params, train
from tests.train.helpers import assert_same_leaves as _assert_same, tiny_setup


def _metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def test_flop_budget_sets_the_steps_from_xla_cost(tmp_path):
  process, data, cfg = tiny_setup(steps=1000)
  per_step = {}
  for batch in (16, 32):
    c = dataclasses.replace(cfg, batch_size=batch, flops=1.0)  # 1 FLOP: one step at least
    train(process, data.x_train, data.y_train, c, tmp_path / f"b{batch}")
    per_step[batch] = read_training_info(tmp_path / f"b{batch}")["flops_per_step"]
  # The step's cost is the network's, linear in the batch (plus a batch-free optimiser part).
  assert 1.7 < per_step[32] / per_step[16] < 2.05, per_step
  budget = 7.5 * per_step[32]
  state = train(process, data.x_train, data.y_train,
                dataclasses.replace(cfg, flops=budget), tmp_path / "budget")
  info = read_training_info(tmp_path / "budget")
  assert info["steps"] == 7 == int(state.step) == info["step"]  # floor(7.5), not the 1000 steps
  assert [r["step"] for r in _metrics(tmp_path / "budget")][-1] == 7


def test_held_out_examples_are_never_trained_on(tmp_path):
  process, data, cfg = tiny_setup(steps=5)
  held = dataclasses.replace(cfg, val_examples=40, eval_every=2)
  a = train(process, data.x_train, data.y_train, held, tmp_path / "held")
  b = train(process, data.x_train[:-40], data.y_train[:-40], cfg, tmp_path / "cut")
  _assert_same(a.params, b.params)  # identical training: the last 40 were held out
  info = read_training_info(tmp_path / "held")
  assert (info["train_examples"], info["val_examples"]) == (216, 40)
  vals = [r for r in _metrics(tmp_path / "held") if "val/loss" in r]
  assert [r["step"] for r in vals] == [2, 4, 5]
  # The recorded validation loss is the process's loss on the held-out examples.
  evaluate = training_best.validation_loss_fn(process, data.x_train[-40:], data.y_train[-40:],
                                               cfg.batch_size, cfg.seed, _mesh())
  assert vals[-1]["val/loss"] == pytest.approx(evaluate(a.ema_params)["loss"], rel=1e-6)
  other = training_best.validation_loss_fn(process, data.x_train[:40], data.y_train[:40],
                                            cfg.batch_size, cfg.seed, _mesh())
  assert vals[-1]["val/loss"] != pytest.approx(other(a.ema_params)["loss"], rel=1e-3)


def _mesh():
  from ardiff import parallel
  return parallel.data_mesh()


SCRIPTED = [5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0]  # validation losses at steps 1, 2, 3, ...


def _scripted_validation(monkeypatch):
  """Validation losses from SCRIPTED in call order (the loop's logic, not the model's)."""
  calls = []

  def fake(*args, **kwargs):
    def evaluate(params):
      calls.append(params)
      return {"loss": SCRIPTED[len(calls) - 1]}
    return evaluate

  monkeypatch.setattr(training_best, "validation_loss_fn", fake)
  return calls


def test_early_stopping_keeps_the_best_ema(tmp_path, monkeypatch):
  process, data, cfg = tiny_setup(steps=7)
  calls = _scripted_validation(monkeypatch)
  stopping = dataclasses.replace(cfg, val_examples=40, eval_every=1, patience=2,
                                 snapshots=(0.5,))
  state = train(process, data.x_train, data.y_train, stopping, tmp_path / "stop")
  # Best 3.0 at step 3; steps 4 and 5 do not improve: stop at 5 (patience 2), not at 7.
  assert int(state.step) == 5 and len(calls) == 5
  info = read_training_info(tmp_path / "stop")
  assert (info["best_step"], info["best_val"], info["stopped_early_at"]) == (3, 3.0, 5)
  reference = train(process, data.x_train[:-40], data.y_train[:-40], cfg, tmp_path / "ref",
                    stop_at=3)
  _assert_same(state.ema_params, reference.ema_params)  # the EMA of step 3, not of step 5
  # Snapshot at half the budget (round(3.5) = 4): the best so far then was step 3's.
  snaps = snapshot_params(tmp_path / "stop", reference.ema_params)
  assert list(snaps) == [4]
  _assert_same(snaps[4], reference.ema_params)
  # A rerun of the converged model trains nothing and returns the same best parameters.
  rows = len(_metrics(tmp_path / "stop"))
  again = train(process, data.x_train, data.y_train, stopping, tmp_path / "stop")
  assert int(again.step) == 5 and len(_metrics(tmp_path / "stop")) == rows
  _assert_same(again.ema_params, reference.ema_params)


def test_snapshots_without_validation_are_the_ema_at_that_step(tmp_path):
  process, data, cfg = tiny_setup(steps=8)
  train(process, data.x_train, data.y_train, dataclasses.replace(cfg, snapshots=(0.25, 0.5)),
        tmp_path / "snap")
  ref = train(process, data.x_train, data.y_train, cfg, tmp_path / "ref", stop_at=4)
  snaps = snapshot_params(tmp_path / "snap", ref.ema_params)
  assert list(snaps) == [2, 4]
  _assert_same(snaps[4], ref.ema_params)


def test_interrupted_validated_run_resumes_to_the_same_best(tmp_path):
  process, data, cfg = tiny_setup(steps=6)
  c = dataclasses.replace(cfg, val_examples=40, eval_every=2)
  whole = train(process, data.x_train, data.y_train, c, tmp_path / "whole")
  train(process, data.x_train, data.y_train, c, tmp_path / "split", stop_at=3)
  resumed = train(process, data.x_train, data.y_train, c, tmp_path / "split")
  _assert_same(resumed.ema_params, whole.ema_params)
  a, b = read_training_info(tmp_path / "whole"), read_training_info(tmp_path / "split")
  assert (a["best_step"], a["best_val"]) == (b["best_step"], pytest.approx(b["best_val"]))


@pytest.mark.parametrize("overrides, key", [
    (dict(val_examples=10), "train.eval_every"),
    (dict(patience=3), "train.patience"),
    (dict(flops=-1.0), "train.flops"),
    (dict(snapshots=(1.5,)), "train.snapshots"),
    (dict(eval_every=-2, val_examples=3), "train.eval_every"),
])
def test_bad_budget_settings_name_the_key(overrides, key):
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    TrainConfig(**overrides)


def test_holding_out_everything_is_a_config_error(tmp_path):
  process, data, cfg = tiny_setup(steps=2)
  with pytest.raises(ConfigError, match="val_examples"):
    train(process, data.x_train, data.y_train,
          dataclasses.replace(cfg, val_examples=len(data.x_train), eval_every=1), tmp_path)
