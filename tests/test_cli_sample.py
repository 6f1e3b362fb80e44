"""`ardiff sample` and `ardiff config` from the command line, on a tiny trained spiral."""

import json
import os

import ml_collections
import numpy as np
import pytest

from ardiff import model_cache
from ardiff.cli import main
from ardiff.data.spiral import spiral_dataset
from ardiff.presets import diffusion_section, train_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A work dir holding one trained (10-step) spiral model, as an experiment leaves it."""
  root = tmp_path_factory.mktemp("spiral")
  config = ml_collections.ConfigDict({"dtype": "float32", "model_cache": ""})
  data = spiral_dataset(num_train=256, num_test=12)
  model = ml_collections.ConfigDict({"width": 16, "depth": 1})
  model_cache.train_model("gaussian", config, str(root), data, model,
                          train_section(steps=10, batch_size=32, log_every=5, checkpoint_every=10),
                          diffusion=diffusion_section(num_timesteps=50))
  # The keys the spiral experiment writes that say how its data was made (`ardiff eval`).
  (root / "config.json").write_text(json.dumps(
      {"model_cache": "", "seed": 0, "dataset": "spiral",
       "data": {"path": "", "num_train": 256, "num_test": 12, "num_classes": 3, "noise": 0.04}}))
  return root


def test_sample_writes_npz_and_png(workdir, tmp_path, capsys):
  out = tmp_path / "s.npz"
  assert main(["sample", str(workdir), "--spec=ddim:5", "--num=12", "--label=1",
               "--guidance=2", f"--out={out}"]) == 0
  saved = np.load(out)
  assert saved["samples"].shape == (12, 2) and np.isfinite(saved["samples"]).all()
  np.testing.assert_array_equal(saved["labels"], np.ones(12))
  assert str(saved["spec"]) == "ddim:5"
  assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "10 NFE" in capsys.readouterr().err  # 5 guided steps: two streams each
  # The model directory itself works too, and the same seed gives the same samples.
  model_dir = model_cache.find_models(str(workdir))[0]
  again = tmp_path / "t.npz"
  assert main(["sample", model_dir, "--spec=ddim:5", "--num=12", "--label=1", "--guidance=2",
               f"--out={again}"]) == 0
  np.testing.assert_array_equal(np.load(again)["samples"], saved["samples"])


@pytest.mark.parametrize("args,message", [
    (["--spec=euler:5"], "unknown sampler 'euler'.*known: ddim, ddpm"),
    (["--spec=ddim:0"], "num_steps must be a positive integer, got 0"),
    (["--spec=ddim:5:spacing=cosine"], "unknown time-step spacing 'cosine'.*karras"),
    (["--spec=ddim:5", "--label=7"], "--label must lie in 0..2"),
    (["--spec=ddim:5", "--negative=1"], "needs a guidance scale"),
    (["--spec=ddim:5", "--num=0"], "--num must be >= 1"),
    (["--spec=ddim:5", "--out=x.png"], "must name a .npz"),
])
def test_bad_sample_arguments_exit_2_with_one_line(workdir, tmp_path, capsys, args, message):
  out = [a for a in args if a.startswith("--out")] or [f"--out={tmp_path / 'x.npz'}"]
  args = [a for a in args if not a.startswith("--out")]
  assert main(["sample", str(workdir), *args, *out]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  import re
  assert re.search(message, err), err
  assert not (tmp_path / "x.npz").exists()


def test_sample_finds_no_model_or_too_many(tmp_path, workdir, capsys):
  assert main(["sample", str(tmp_path / "nope"), "--spec=ddim:5", "--out=a.npz"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert main(["sample", str(tmp_path), "--spec=ddim:5", "--out=a.npz"]) == 2
  assert "no trained model" in capsys.readouterr().err
  models = tmp_path / "w" / "models"
  models.mkdir(parents=True)
  src = model_cache.find_models(str(workdir))[0]
  for name in ("a", "b"):
    os.symlink(src, models / name)
  assert main(["sample", str(tmp_path / "w"), "--spec=ddim:5", "--out=a.npz"]) == 2
  assert "holds 2 models; give one of them" in capsys.readouterr().err


def test_config_command_prints_the_resolved_config(capsys):
  spiral = os.path.join(ROOT, "experiments", "spiral.py")
  assert main(["config", spiral, "--config.train.steps=7", "--config.scale=paper"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["train"]["steps"] == 7 and printed["model"]["width"] == 256
  assert main(["config", spiral, "--config.scale=huge"]) == 2
  err = capsys.readouterr().err
  assert "unknown size 'huge'; this experiment's sizes are" in err and "Traceback" not in err


def test_run_help_says_how_overrides_work(capsys):
  with pytest.raises(SystemExit):
    main(["run", "--help"])
  out = capsys.readouterr().out
  assert "--config.KEY=VALUE" in out and "ardiff config" in out


def test_sample_refuses_the_null_label_of_a_model_trained_without_dropout(workdir, tmp_path,
                                                                          capsys):
  """p_uncond=0: unconditional samples and guidance would use an untrained null label."""
  import shutil

  model = tmp_path / "model"
  shutil.copytree(model_cache.find_models(str(workdir))[0], model)
  card = json.loads((model / "model.json").read_text())
  card["extra"]["diffusion"]["p_uncond"] = 0.0
  (model / "model.json").write_text(json.dumps(card))
  for args in (["--label=1", "--guidance=2"], []):
    assert main(["sample", str(model), "--spec=ddim:5", *args, f"--out={tmp_path / 'x.npz'}"]) == 2
    err = capsys.readouterr().err
    assert "p_uncond=0" in err and err.count("\n") == 1
  assert not (tmp_path / "x.npz").exists()


def _model(workdir):
  return model_cache.load_model(model_cache.find_models(str(workdir))[0])


def test_guidance_without_a_label_guides_towards_random_classes(workdir, tmp_path, capsys):
  """--guidance alone: against the null label the null label would change nothing (at twice
  the NFE), so each sample gets a class drawn from --seed and is guided towards it."""
  import jax

  from ardiff.processes.guidance import Guidance

  out = tmp_path / "g.npz"
  assert main(["sample", str(workdir), "--spec=ddim:5", "--num=12", "--guidance=3",
               f"--out={out}"]) == 0
  assert "10 NFE, classes drawn uniformly from 0..2" in capsys.readouterr().err
  saved = np.load(out)
  labels = saved["labels"]
  assert labels.min() >= 0 and labels.max() <= 2 and len(set(labels.tolist())) > 1
  process, params, _ = _model(workdir)
  key = jax.random.key(0)
  np.testing.assert_array_equal(
      saved["samples"], process.sample(params, key, labels, "ddim:5", guidance=Guidance(3.0)))
  unguided = np.asarray(process.sample(params, key, np.full(12, 3, np.int32), "ddim:5"))
  assert np.abs(saved["samples"] - unguided).max() > 1e-3


def _table(out: str) -> dict:
  """`ardiff eval`'s markdown table -> {metric: (model, floor or None)}."""
  rows = [line.strip("|").split("|") for line in out.strip().splitlines()[2:]]
  return {m.strip(): (float(v), None if f.strip() == "-" else float(f)) for m, v, f in rows}


def test_eval_prints_the_spirals_metrics_beside_the_floor(workdir, capsys):
  """The numbers are `point_metrics` of the same samples (and of as many training points)
  against the held-out split rebuilt from config.json (test_model_data.py: how it is found)."""
  import jax

  from ardiff.metrics.points import point_metrics

  assert main(["eval", str(workdir), "--spec=ddim:5", "--seed=3"]) == 0
  out, err = capsys.readouterr()
  assert "12 samples" in err and "5 NFE) against the 12 held-out examples of spiral" in err
  got = _table(out)
  data = spiral_dataset(num_train=256, num_test=12)
  process, params, _ = _model(workdir)
  samples = process.sample(params, jax.random.key(3), np.full(12, 3, np.int32), "ddim:5")
  want, floor = point_metrics(samples, data.x_test), point_metrics(data.x_train[:12], data.x_test)
  assert set(got) == set(want)  # points: no likelihood, no bits row
  for name in want:
    np.testing.assert_allclose(got[name], (want[name], floor[name]), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("args,message", [
    (["--spec=euler:5"], "unknown sampler 'euler'.*known: ddim, ddpm"),
    (["--spec=ddim:5", "--label=7"], "--label must lie in 0..2"),
    (["--spec=ddim:5", "--num=3"], "--num must be >= 4"),
    (["--spec=ddim:5", "--config.noise=0.05"], r"unexpected arguments \['--config.noise=0.05'\]"),
])
def test_bad_eval_arguments_exit_2_with_one_line(workdir, capsys, args, message):
  assert main(["eval", str(workdir), *args]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  import re
  assert re.search(message, err), err


def test_eval_refuses_a_config_whose_data_is_not_the_models(workdir, tmp_path, capsys):
  """A work dir whose config.json draws a different spiral (noise 0.05): no split of its own
  to score against, so one line naming the config, rather than numbers against another split."""
  import shutil

  shutil.copytree(model_cache.find_models(str(workdir))[0], tmp_path / "models" / "m")
  config = json.loads((workdir / "config.json").read_text())
  config["data"]["noise"] = 0.05
  (tmp_path / "config.json").write_text(json.dumps(config))
  assert main(["eval", str(tmp_path), "--spec=ddim:5"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert f"{tmp_path / 'config.json'} describes no dataset with its spec" in err
