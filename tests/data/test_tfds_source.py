"""tfds-backed MNIST / CIFAR-10 through tfds' mock data (no download, no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from ardiff.data.tfds_source import load_tfds_dataset  # noqa: E402

NUM = 13  # mock examples per split; odd so that shards differ in size


def _direct(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The split read straight from tfds, as the reference."""
  source = tfds.data_source(name, split=split, download=False)
  examples = [source[i] for i in range(len(source))]
  return np.stack([ex["image"] for ex in examples]), np.array([ex["label"] for ex in examples])


def _rows(x: np.ndarray) -> list[bytes]:
  return [row.tobytes() for row in x]


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_shapes_dtypes_levels_labels(name, shape):
  with tfds.testing.mock_data(num_examples=NUM):
    ds = load_tfds_dataset(name)
    ref_x, ref_y = _direct(name, "train")
  assert (ds.name, ds.kind, ds.num_levels, ds.num_classes) == (name, "image", 256, 10)
  assert ds.shape == shape
  assert ds.x_train.shape == (NUM, *shape) and ds.x_test.shape == (NUM, *shape)
  assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
  assert ds.y_train.min() >= 0 and ds.y_train.max() < 10
  np.testing.assert_array_equal(ds.x_train, ref_x)
  np.testing.assert_array_equal(ds.y_train, ref_y)
  assert ds.x_train.max() > 1  # really 0..255 levels, not rescaled to [0, 1]


@pytest.mark.parametrize("count", [2, 3])
def test_train_shards_are_disjoint_and_cover_the_split(count):
  with tfds.testing.mock_data(num_examples=NUM):
    full = load_tfds_dataset("mnist")
    shards = [load_tfds_dataset("mnist", process_index=p, process_count=count)
              for p in range(count)]
  sizes = [len(s.x_train) for s in shards]
  assert sum(sizes) == NUM and max(sizes) - min(sizes) <= 1
  for p, shard in enumerate(shards):  # shard p holds examples p, p + count, ...
    np.testing.assert_array_equal(shard.x_train, full.x_train[p::count])
    np.testing.assert_array_equal(shard.y_train, full.y_train[p::count])
    np.testing.assert_array_equal(shard.x_test, full.x_test)  # test split stays whole
  rows = [r for s in shards for r in _rows(s.x_train)]
  assert len(set(rows)) == len(rows) == NUM  # disjoint (mock images are distinct)
  assert sorted(rows) == sorted(_rows(full.x_train))  # and together the whole split


def test_max_examples_caps_before_sharding():
  with tfds.testing.mock_data(num_examples=NUM):
    full = load_tfds_dataset("cifar10")
    capped = load_tfds_dataset("cifar10", max_examples=5)
    shard = load_tfds_dataset("cifar10", process_index=1, process_count=2, max_examples=5)
  np.testing.assert_array_equal(capped.x_train, full.x_train[:5])
  np.testing.assert_array_equal(capped.x_test, full.x_test[:5])
  np.testing.assert_array_equal(shard.x_train, full.x_train[1:5:2])


def test_not_prepared_names_dataset_dir_and_remedy(tmp_path):
  with pytest.raises(FileNotFoundError) as info:
    load_tfds_dataset("mnist", data_dir=str(tmp_path))
  msg = str(info.value)
  assert "'mnist'" in msg and str(tmp_path) in msg
  assert "tfds build mnist --file_format=array_record" in msg
  assert "download_and_prepare" in msg and "TFDS_DATA_DIR" in msg
  assert not any(tmp_path.rglob("*.array_record*"))  # nothing was downloaded or built


def test_not_prepared_uses_tfds_data_dir_env(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="cifar10") as info:
    load_tfds_dataset("cifar10")
  assert str(tmp_path) in str(info.value)


def test_bad_arguments():
  with pytest.raises(ValueError, match="name='svhn'.*cifar10, mnist"):
    load_tfds_dataset("svhn")
  with pytest.raises(ValueError, match="process_index"):
    load_tfds_dataset("mnist", process_index=2, process_count=2)
  with pytest.raises(ValueError, match="process_count"):
    load_tfds_dataset("mnist", process_count=0)
  with pytest.raises(ValueError, match="max_examples"):
    load_tfds_dataset("mnist", max_examples=0)
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match="no train examples"):
      load_tfds_dataset("mnist", process_index=2, process_count=3)
