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


def test_scale_selects_defaults_and_explicit_overrides_win():
  _, c = get_experiment_config(SPIRAL, ["scale=paper", "train.steps=7"])
  assert c.scale == "paper" and c.model.width == 256 and c.train.steps == 7


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
    ("scale=huge", "'scale'.*huge"),
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
