"""model_cache.fit_cached, the one cached-training path, keys models as the hand-written copies it
replaced did (their cached models stay valid), and fit_model goes through it."""

from __future__ import annotations

import json
import os
import types

import ml_collections
import numpy as np
import pytest

from ardiff import model_cache
from ardiff.data.digits import load_digits_dataset
from ardiff.presets import image_config


@pytest.fixture
def calls(monkeypatch):
  """train_cached records its arguments instead of training."""
  seen = []

  def fake(process, x, y, train_cfg, directory, **kwargs):
    seen.append(dict(process=process, x=x, y=y, train_cfg=train_cfg, directory=directory,
                     kwargs=kwargs))
    return types.SimpleNamespace(ema_params={"w": 1})

  monkeypatch.setattr(model_cache, "train_cached", fake)
  return seen


def test_fit_cached_key_order_card_and_loop_arguments(tmp_path, calls):
  c = image_config("small", ar=True)
  data = load_digits_dataset()
  train = ml_collections.ConfigDict(dict(c.train, steps=7))
  key, after = ("digits", {"a": 1}), ({"curve_points": 3},)
  inputs = np.zeros((len(data.y_train), 4))
  model = model_cache.fit_cached("proc", c, str(tmp_path), data, train, name="m", key=key,
                                 inputs=inputs, key_after_train=after, keep_steps=True, version=2,
                                 eval_every=5)
  # What causal_vs_bidirectional wrote by hand: the parts after the train key, steps kept.
  expected = model_cache.model_dir(c, str(tmp_path), "m", *key,
                                   model_cache.train_key(train, keep_steps=True), *after,
                                   version=2)
  assert model.directory == expected and calls[-1]["directory"] == expected
  assert calls[-1]["x"] is inputs and calls[-1]["y"] is data.y_train
  assert calls[-1]["kwargs"] == {"eval_every": 5}
  assert model.params == {"w": 1} and model.process == "proc" and model.info == {}
  assert not os.path.exists(os.path.join(expected, model_cache.MODEL_CARD))  # no card asked for
  # Without keep_steps the budget leaves the key: another step count, the same directory.
  short = model_cache.fit_cached("proc", c, str(tmp_path), data, train, name="m", key=key,
                                 inputs=inputs)
  longer = model_cache.fit_cached("proc", c, str(tmp_path), data, dict(train, steps=70), name="m",
                                  key=key, inputs=inputs)
  assert short.directory == longer.directory != expected


def test_fit_model_writes_the_card_and_keys_like_before(tmp_path, calls):
  from ardiff import build

  c = image_config("small", ar=True)
  data = load_digits_dataset()
  model = model_cache.fit_model("raster", c, str(tmp_path), data, c.ar, c.train,
                                key_after_train=({"x": 1},), keep_steps=True,
                                train_kwargs={"eval_every": 3})
  model_key = {k: v for k, v in c.ar.items() if k not in build.COMPUTE_ONLY_FIELDS}
  assert model.directory == model_cache.model_dir(
      c, str(tmp_path), "digits-raster", "digits", model_key,
      model_cache.train_key(c.train, keep_steps=True), {"x": 1},
      version=build.code_version("raster", data))
  card = json.loads(open(os.path.join(model.directory, model_cache.MODEL_CARD)).read())
  assert card["kind"] == "raster" and card["model"] == c.ar.to_dict()
  assert calls[-1]["kwargs"]["eval_every"] == 3 and "preview_fn" in calls[-1]["kwargs"]
