"""Every experiment file runs end to end at a tiny scale and writes its figures and table."""

import glob
import os

import numpy as np
import pytest

from ardiff.configs import get_experiment_config
from ardiff.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))


def test_every_experiment_has_a_smoke_size():
  assert EXPERIMENTS
  for path in EXPERIMENTS:
    module, small = get_experiment_config(path, [])
    assert "smoke" in getattr(module.get_config, "sizes", ()), f"{path} has no smoke size"
    _, smoke = get_experiment_config(path, [], size="smoke")
    assert smoke.size == "smoke" and {**smoke.to_dict(), "size": "small"} != small.to_dict()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[os.path.basename(p) for p in EXPERIMENTS])
def test_experiment_runs_at_tiny_scale(path, tmp_path):
  module, config = get_experiment_config(path, [], size="smoke")
  module.run(config, str(tmp_path))
  pngs = glob.glob(str(tmp_path / "*.png"))
  assert pngs, "no figure written"
  for png in pngs:
    with open(png, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  table = (tmp_path / "results.md").read_text()
  assert table.count("\n|") >= 3  # header, separator, at least one row
  assert (tmp_path / "results.csv").exists()


# The MNIST comparison's own config (size mnist: bfloat16 compute, batched sampling, k dividing
# 784, 2x2 patches for the diffusion transformer) with tiny models and remat on, on tfds' mock
# MNIST (random 28x28 images, no download); one training seed, no budget snapshots.
MNIST_SMOKE = ["sample.runs.ardm=['ardm:k=392', 'ardm:k=392:order=contiguous']",
               "sample.runs.diffusion_unet=['ddim:2']", "compute_specs.ardm=['ardm:k=392']",
               "unet.channel_mult=[1, 2]", "train.batch_size=8", "ar.heads=2",
               "ar.remat=True", "num_samples=32", "sample_batch=16", "train.val_examples=16",
               "training_seeds=[0]", "train.snapshots=[]",
               # masked diffusion runs ARDM's network (the MNIST paths are tested there)
               "families=['raster', 'ardm', 'diffusion_transformer', 'diffusion_unet']",
               "reveal_nfe=0",
               # two test images for the bits (the ARDM bound runs its network once per pixel:
               # 784 calls at 784 tokens, ~45 s of the CPU at 8 images, ~5 s at 2) and
               # validation every 4 of the ~8 steps: still early stopping's path, half the passes
               "test_bits_examples=2", "train.eval_every=4"]


def test_mnist_comparison_runs_on_mock_tfds_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  path = os.path.join(ROOT, "experiments", "ar_vs_diffusion.py")
  module, _ = get_experiment_config(path, [])
  smoke = module.get_config.derived["smoke"]  # the smoke size's overrides, on the mnist size
  _, config = get_experiment_config(path, [*smoke, *MNIST_SMOKE], size="mnist")
  assert (config.dataset, config.dtype, config.dit_patch_size) == ("mnist", "bfloat16", 2)
  with tfds.testing.mock_data(num_examples=80):
    rows = module.run(config, str(tmp_path))
  methods = {r["method"] for r in rows}
  assert methods == {"raster AR (1 pixel/step)", "ARDM, k contiguous pixels/step",
                     "ARDM, k random pixels/step", "diffusion (transformer) DDIM",
                     "diffusion (UNet) DDIM"}
  assert all(r["fd"] > 0 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1 for r in rows)
  assert {r["NFE"] for r in rows if r["method"].startswith("ARDM")} == {2}
  assert next(r for r in rows if r["method"].startswith("raster"))["NFE"] == 28 * 28
  assert "mnist 28x28x1, 256 levels, split 80/80" in (tmp_path / "results.md").read_text()
  training = (tmp_path / "training.md").read_text()
  assert "budget" in training
  # Each family's own learning rate (`learning_rates`) reaches its row; the others keep 1e-3.
  header, _, *table = [[cell.strip() for cell in line.strip("|").split("|")]
                       for line in training.splitlines() if line.startswith("|")]
  lr = {row[0]: row[header.index("lr")] for row in table}
  assert lr == {"raster AR": "0.001", "ARDM": "0.001", "diffusion (transformer)": "0.003",
                "diffusion (UNet)": "0.001"}
  for name in ("quality_vs_nfe.png", "grids_by_nfe.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not (tmp_path / "reveal.png").exists()  # reveal_nfe=0


def test_spiral_trains_on_a_users_unlabelled_points(tmp_path):
  """`--config.data.path=points.npz` (x only, range ~±3): no other key to change; the
  guidance figure is skipped for unlabelled data; a missing file is a config error."""
  from ardiff.configs import ConfigError
  from ardiff.data.spiral import spiral_dataset

  # 640 points: the 576 left after the 10% test split fill one batch of the default 512.
  points = 3.0 * spiral_dataset(640, 10, 3, 0.03, seed=0).x_train
  np.savez(tmp_path / "points.npz", x=points)
  path = os.path.join(ROOT, "experiments", "spiral.py")
  module, _ = get_experiment_config(path, [])
  _, config = get_experiment_config(path, [f"data.path={tmp_path / 'points.npz'}"], size="smoke")
  out = tmp_path / "run"
  out.mkdir()
  rows = module.run(config, str(out))
  assert not (out / "guidance.png").exists() and (out / "samplers.png").exists()
  assert "Points from" in (out / "results.md").read_text()
  assert all(np.isfinite(r["sliced_w1"]) for r in rows)
  with pytest.raises(DataError, match="none.npz: does not exist"):
    module.validate(get_experiment_config(path, [f"data.path={tmp_path / 'none.npz'}"])[1])


def test_mnist_config_is_paper_sized():
  from ardiff.presets import image_config, validate_image_config
  from ardiff.processes.spec import parse_spec

  c = image_config("mnist", ar=True, diffusion=True)
  validate_image_config(c)
  assert (c.ar.width, c.ar.depth, c.unet.base_channels, c.train.steps) == (256, 8, 64, 50_000)
  assert c.train.batch_size == 64  # what one 80 GB GPU holds at L = 784 (see image_config)
  # 28 -> 14 -> 7: every halving keeps the side even until the lowest level.
  assert 28 % 2 ** (len(c.unet.channel_mult) - 1) == 0
  path = os.path.join(ROOT, "experiments", "ar_vs_diffusion.py")
  _, config = get_experiment_config(path, [], size="mnist")
  ks = [parse_spec(s).get("k") for s in config.sample.runs.ardm if parse_spec(s).name == "ardm"]
  assert all(784 % k == 0 for k in ks) and {1, 784} <= set(ks) and len(set(ks)) == 6
  assert config.train.flops == 0 and config.budget_steps == 50_000  # FLOPs set at run time


def test_ar_vs_diffusion_learning_rates_name_a_family():
  from ardiff.configs import ConfigError

  path = os.path.join(ROOT, "experiments", "ar_vs_diffusion.py")
  with pytest.raises(ConfigError, match="learning_rates.diffusion_transformer"):
    get_experiment_config(path, ["learning_rates.diffusion_transformer=0.0"])  # validates
  module, config = get_experiment_config(path, [])
  config.learning_rates.unet = 1e-3  # a family is 'diffusion_unet'
  with pytest.raises(ConfigError, match="learning_rates.unet.*not a family"):
    module.validate(config)


def test_in_batches_splits_labels_and_folds_keys():
  import jax
  import numpy as np

  from ardiff.experiment_helpers import in_batches

  def sample(key, labels):  # deterministic in (key, labels): a key-dependent offset per call
    return np.asarray(labels) * 10 + int(jax.random.randint(key, (), 0, 5))

  key, labels = jax.random.key(0), np.arange(7)
  np.testing.assert_array_equal(in_batches(sample, key, labels, 0), sample(key, labels))
  np.testing.assert_array_equal(in_batches(sample, key, labels, 7), sample(key, labels))
  out = in_batches(sample, key, labels, 3)  # 3 + 3 + 1
  expect = np.concatenate([sample(jax.random.fold_in(key, i), labels[s:s + 3])
                           for i, s in enumerate((0, 3, 6))])
  np.testing.assert_array_equal(out, expect)
  assert out.shape == (7,)


def test_noisy_classifier_key_leaves_out_loop_only_fields(tmp_path, monkeypatch):
  """digits_diffusion's noise-aware classifier is keyed like every model
  (`model_cache.train_key`): a longer run extends the cached one; a change that trains a different model gets its own."""
  import types

  from ardiff import model_cache
  from ardiff.data.digits import load_digits_dataset

  path = os.path.join(ROOT, "experiments", "digits_diffusion.py")
  module, _ = get_experiment_config(path, [])
  data = load_digits_dataset()
  process = types.SimpleNamespace(schedule_name="cosine", num_timesteps=10, num_classes=10,
                                  inputs="continuous")
  dirs = []
  monkeypatch.setattr(model_cache, "train_cached", lambda *args, **kw: dirs.append(args[4]) or
                      types.SimpleNamespace(ema_params=None))
  for extra in (["noisy_classifier.train.steps=4"], ["noisy_classifier.train.steps=8"],
                ["noisy_classifier.train.steps=4", "noisy_classifier.train.log_every=1"],
                ["noisy_classifier.train.learning_rate=0.01"]):
    _, config = get_experiment_config(path, extra, size="smoke")
    module._noisy_classifier(config, str(tmp_path), data, process)
  assert dirs[0] == dirs[1] == dirs[2] != dirs[3]
  assert os.path.basename(dirs[0]).startswith("digits-noisy-classifier-")


def test_ar_vs_diffusion_budget_in_flops_or_reference_steps(monkeypatch):
  """`budget_tflop` > 0 is the budget itself; 0 derives it from `budget_steps` of the
  reference family's train step as XLA costs it."""
  from ardiff.comparison import budget as comparison_budget

  path = os.path.join(ROOT, "experiments", "ar_vs_diffusion.py")
  module, config = get_experiment_config(path, [])
  assert config.budget_tflop == 1.385012928  # the small scale's stated budget
  costs = {"raster": 9e8, "ardm": 1e9}
  monkeypatch.setattr(comparison_budget, "train_step_flops", lambda process, *a: costs[process])
  monkeypatch.setattr(comparison_budget.model_cache, "model_inputs", lambda kind, data: None)
  data = type("D", (), {"y_train": None})()
  processes = {"raster": "raster", "ardm": "ardm"}
  budget, per_step = comparison_budget.flop_budget(config, data, processes)
  assert budget == 1.385012928e12 and per_step == costs
  config.budget_tflop = 0.0
  assert comparison_budget.flop_budget(config, data, processes)[0] == 1500 * 9e8
  _, quick = get_experiment_config(path, [], size="quick")
  assert quick.budget_tflop == 1.385012928 / 4 and quick.budget_steps == 375
