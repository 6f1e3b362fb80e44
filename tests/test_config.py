"""Config overrides and validation: errors name the key."""

import os

import pytest

from ardiff.cli import main
from ardiff.configs import ConfigError, get_experiment_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPIRAL = os.path.join(ROOT, "experiments", "spiral.py")


def test_overrides_apply_with_types():
  _, c = get_experiment_config(SPIRAL, ["train.steps=123", "diffusion.schedule=linear",
                                        "train.learning_rate=1", "sample.runs=['ddim:5']"])
  assert c.train.steps == 123 and c.diffusion.schedule == "linear"
  assert isinstance(c.train.learning_rate, float) and c.sample.runs == ["ddim:5"]


def test_size_selects_defaults_and_explicit_overrides_win():
  for spelling in (["size=paper"], ["scale=paper"]):  # --config=paper, and the older spelling
    _, c = get_experiment_config(SPIRAL, [*spelling, "train.steps=7"])
    assert c.size == "paper" and c.model.width == 256 and c.train.steps == 7
  _, c = get_experiment_config(SPIRAL, ["train.steps=7"], size="smoke")
  assert c.size == "smoke" and c.model.width == 32 and c.train.steps == 7  # smoke, then 7


def test_cli_config_flag_is_the_size(capsys):
  assert main(["config", SPIRAL, "--config=smoke", "--config.train.steps=7"]) == 0
  out = capsys.readouterr().out
  assert '"size": "smoke"' in out and '"steps": 7' in out and '"width": 32' in out


def test_size_stays_out_of_model_keys(tmp_path):
  """Every size records itself in `config.size`, top level, outside the sections a model key
  hashes: the same sections give the same model directory whatever the size says."""
  from ardiff import model_cache
  from ardiff.configs import SIZES

  path = os.path.join(ROOT, "experiments", "ar_vs_diffusion.py")
  module, _ = get_experiment_config(path, [])
  assert module.get_config.sizes == SIZES
  for size in SIZES:
    _, c = get_experiment_config(path, [], size=size)
    assert c.size == size and all("size" not in c[s] for s in ("ar", "unet", "train"))
    dirs = set()
    for label in SIZES:
      c.size = label
      dirs.add(model_cache.model_dir(c, str(tmp_path), "m", c.ar, model_cache.train_key(c.train)))
    assert len(dirs) == 1


@pytest.mark.parametrize("override,message", [
    ("train.stepz=5", "unknown config key 'train.stepz'; did you mean 'train.steps'"),
    ("train.steps=abc", "'train.steps' expects int, got str"),
    ("train.steps=-5", "'train.steps': must be positive"),
    ("sample.runs=['ddim:50:spacing=edm']", "'sample.runs'.*unknown time-step spacing 'edm'"),
    ("sample.runs=['euler:10']", "'sample.runs'.*unknown sampler 'euler'.*known: ddim, ddpm"),
    ("sample.runs=['ddim']", "'sample.runs'.*needs a step count"),
    ("sample.guidance_sampler=ddim:x", "'sample.guidance_sampler'.*must be an integer"),
    ("diffusion.target=score", "'diffusion.target'.*unknown value 'score'"),
    ("diffusion.schedule=quadratic", "'diffusion.schedule'.*unknown value 'quadratic'"),
    ("train=3", "is a section"),
    ("scale=huge", "size 'huge'.*smoke, small, paper"),
    ("size=quick", "size 'quick'.*smoke, small, paper"),
    ("quick=True", "is now --config=quick"),
    ("sample.runs=['ddpm:10:eta=1']", "no option"),
])
def test_config_errors_name_the_key(override, message):
  with pytest.raises(ValueError, match=message):
    get_experiment_config(SPIRAL, [override])


def test_cli_reports_config_errors_cleanly(capsys, tmp_path):
  code = main(["run", SPIRAL, f"--workdir={tmp_path}", "--config.train.stepz=3"])
  assert code == 2
  assert "config error: unknown config key 'train.stepz'" in capsys.readouterr().err
  assert main(["run", "experiments/nope.py"]) == 2
  assert "not found" in capsys.readouterr().err


def test_config_error_is_a_value_error():
  assert issubclass(ConfigError, ValueError)


def test_sized_derives_smoke_and_quick_from_small():
  import ml_collections

  from ardiff.configs import sized

  def base(scale="small"):
    return ml_collections.ConfigDict(dict(steps={"small": 100, "paper": 1000}[scale], seeds=3))

  get_config = sized(scales=("small", "paper"), smoke=["steps=2"],
                     quick=lambda c: ml_collections.ConfigDict(dict(c, seeds=1)))(base)
  assert get_config.sizes == ("smoke", "quick", "small", "paper")
  assert get_config("smoke").to_dict() == dict(steps=2, seeds=3, size="smoke")
  assert get_config("quick").to_dict() == dict(steps=100, seeds=1, size="quick")
  assert get_config().to_dict() == dict(steps=100, seeds=3, size="small")
  assert get_config("paper").steps == 1000
  with pytest.raises(ConfigError, match="unknown size 'mnist'.*smoke, quick, small, paper"):
    get_config("mnist")
  with pytest.raises(ConfigError, match="'steps' expects int"):  # typed like the command line
    sized(smoke=["steps=x"])(base)("smoke")
  with pytest.raises(ValueError, match="not sizes"):
    sized(scales=("huge",), smoke=[])(base)
  # A get_config without a scale parameter: one scale, small.
  assert sized(smoke=["seeds=1"])(lambda: base())("smoke").seeds == 1
