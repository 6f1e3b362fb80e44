"""A dataset's description without its arrays, for validating configs before any data is read."""

import pytest

from ardiff.data import data_spec, load_dataset
from ardiff.data.base import DataSpec


def test_digits_spec_matches_the_loaded_dataset():
  loaded = load_dataset("digits").spec
  assert data_spec("digits") == loaded
  assert loaded.num_tokens == 64 and DataSpec.from_dict(loaded.to_dict()) == loaded


def test_tfds_specs_need_no_prepared_data(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))  # nothing prepared there
  assert data_spec("mnist") == DataSpec("mnist", "image", (28, 28, 1), 10, 256)
  assert data_spec("cifar10").shape == (32, 32, 3)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    load_dataset("mnist")
