"""`ardiff.model_data`: the data a trained model was trained on, rebuilt from its work dir's
config.json and accepted only where its spec is the model card's (no training here: cards are
written from the datasets' specs)."""

import json

import numpy as np
import pytest

from ardiff.configs import ConfigError
from ardiff.data.spiral import spiral_dataset
from ardiff.model_data import trained_dataset, work_dir_config

SPIRAL = {"path": "", "num_train": 64, "num_test": 8, "num_classes": 3, "noise": 0.04}


def _card(data) -> dict:
  return {"data": json.loads(json.dumps(data.spec.to_dict()))}  # as model.json holds it


def test_the_spiral_of_the_config_is_rebuilt_with_its_held_out_split():
  data = spiral_dataset(64, 8, 3, 0.04, seed=1)
  config = {"seed": 1, "dataset": "spiral", "data": SPIRAL}
  got = trained_dataset(_card(data), config, "W/config.json", "W/models/m")
  np.testing.assert_array_equal(got.x_test, data.x_test)
  np.testing.assert_array_equal(got.x_train, data.x_train)


@pytest.mark.parametrize("change", [{"seed": 0}, {"data": dict(SPIRAL, noise=0.05)},
                                    {"data": dict(SPIRAL, num_test=9)}])
def test_a_config_that_draws_another_spiral_is_refused(change):
  """Another seed, noise or split size: another held-out split; the card's train-split mean
  and spread tell them apart."""
  card = _card(spiral_dataset(64, 8, 3, 0.04, seed=1))
  config = dict({"seed": 1, "dataset": "spiral", "data": SPIRAL}, **change)
  with pytest.raises(ConfigError, match=r"cannot rebuild the points data that the model in "
                     r"'W/models/m' was trained on \(spiral, 3 classes\): W/config.json "
                     "describes no dataset with its spec"):
    trained_dataset(card, config, "W/config.json", "W/models/m")


def test_a_section_of_a_larger_config_is_found_for_each_kind():
  """ddpm_vs_ddim: digits at the top, the spiral in its `spiral` section."""
  spiral = spiral_dataset(64, 8, 3, 0.04, seed=2)
  config = {"seed": 0, "dataset": "digits", "data": {"path": ""},
            "spiral": {"seed": 2, "data": SPIRAL}}
  got = trained_dataset(_card(spiral), config, "W/config.json", "m")
  np.testing.assert_array_equal(got.x_test, spiral.x_test)
  digits = trained_dataset({"data": {"name": "digits", "kind": "image", "shape": [8, 8, 1],
                                     "num_classes": 10, "num_levels": 17}}, config, "c", "m")
  assert digits.name == "digits" and digits.x_test.shape == (297, 8, 8, 1)


def test_without_a_config_only_a_named_image_dataset_is_rebuilt():
  digits = trained_dataset({"data": {"name": "digits", "kind": "image", "shape": [8, 8, 1],
                                     "num_classes": 10, "num_levels": 17}}, None, None, "m")
  assert len(digits.x_test) == 297
  with pytest.raises(ConfigError, match="no config.json beside it says how its data was made; "
                     "give the work dir whose run trained it"):
    trained_dataset(_card(spiral_dataset(64, 8)), None, None, "m")


def test_the_config_is_the_work_dirs_or_the_one_above_the_models_folder(tmp_path):
  model = tmp_path / "w" / "models" / "m"
  model.mkdir(parents=True)
  assert work_dir_config(str(model), str(model)) == (None, None)
  (tmp_path / "w" / "config.json").write_text('{"seed": 5}')
  assert work_dir_config(str(model), str(model)) == ({"seed": 5}, str(tmp_path / "w" /
                                                                      "config.json"))
  (tmp_path / "config.json").write_text('{"seed": 6}')  # the work dir given comes first
  assert work_dir_config(str(tmp_path), str(model))[0] == {"seed": 6}
  (tmp_path / "config.json").write_text('{"seed": ')
  with pytest.raises(ConfigError, match=r"config.json is not valid JSON \(Expecting value"):
    work_dir_config(str(tmp_path), str(model))
