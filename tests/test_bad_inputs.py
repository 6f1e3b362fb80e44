"""Every bad input is one clear line: exit code 2, a message naming the key or file, no
traceback, nothing changed on disk, and nothing trained.

One table of bad inputs: command lines of `ardiff run/config/sample/bench` (called in process
through `ardiff.cli.main`) and data handed to the Python API. Each CLI case runs against a
pre-existing work dir whose files (names and contents) must be unchanged afterwards, with the
experiment's `run` replaced by a function that fails the test: every case must stop at
validation, before anything is trained, compiled or written. Two cases run as subprocesses, to
see the exit status and stderr end to end.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from ardiff import cli
from ardiff.configs import overrides
from ardiff.errors import ArdiffError
from ardiff.workdir import LOCK_FILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPIRAL, DIGITS_AR = "experiments/spiral.py", "experiments/digits_ar.py"
DIGITS_DIFF, AR_VS_DIFF = "experiments/digits_diffusion.py", "experiments/ar_vs_diffusion.py"


def _images(n=80, levels=4, seed=0):
  return np.random.default_rng(seed).integers(0, levels, (n, 8, 8, 1))


# Data files the cases read, written once per module into the data dir "{d}".
FILES = {
    "good_images.npz": lambda: dict(x=_images(), y=np.arange(80) % 3, levels=np.int64(4)),
    "good_points.npz": lambda: dict(x=np.random.default_rng(0).normal(size=(600, 2))),
    "few_points.npz": lambda: dict(x=np.random.default_rng(0).normal(size=(30, 2))),
    "no_x.npz": lambda: dict(images=_images()),
    "wrap_levels.npz": lambda: dict(x=_images() * 100),  # max 300: would wrap in uint8
    "above_levels.npz": lambda: dict(x=_images(levels=9), levels=np.int64(4)),
    "bad_levels_scalar.npz": lambda: dict(x=_images(), levels=np.int64(1)),
    "negative_levels.npz": lambda: dict(x=_images() - 1),
    "float_images.npz": lambda: dict(x=_images().astype(np.float32)),
    "rank3.npz": lambda: dict(x=_images()[..., 0]),
    "label_minus1.npz": lambda: dict(x=_images(), y=np.r_[np.zeros(79, int), -1]),
    "label_float.npz": lambda: dict(x=_images(), y=np.full(80, 0.5)),
    "label_2d.npz": lambda: dict(x=_images(), y=np.zeros((80, 2), int)),
    "label_short.npz": lambda: dict(x=_images(), y=np.zeros(79, int)),
    "nan_points.npz": lambda: dict(x=np.r_[np.zeros((599, 2)), [[np.nan, 0.0]]]),
    "inf_points.npz": lambda: dict(x=np.r_[np.zeros((599, 2)), [[np.inf, 0.0]]]),
    "points_3d.npz": lambda: dict(x=np.zeros((600, 3))),
    "one_example.npz": lambda: dict(x=np.zeros((1, 2))),
    "empty.npz": lambda: dict(x=np.zeros((0, 2))),
    "odd_size_images.npz": lambda: dict(x=np.random.default_rng(0).integers(0, 4, (80, 7, 7, 1))),
    "object.npz": lambda: dict(x=np.array([None] * 4, dtype=object)),
}

# A model card (model.json) of a spiral diffusion trained on T = 50 timesteps, with no
# checkpoint beside it: what `ardiff sample` checks before it reads one.
CARD_T50 = json.dumps({
    "kind": "gaussian", "model": {"width": 8, "depth": 1}, "dtype": "float32",
    "data": {"name": "spiral", "kind": "points", "shape": [2], "num_classes": 3,
             "num_levels": None, "center": [0.0, 0.0], "scale": [1.0, 1.0]},
    "extra": {"diffusion": {"schedule": "cosine", "num_timesteps": 50, "target": "eps",
                            "p_uncond": 0.1, "clip_x0": None}}})

# Text files the cases read, written beside them: an experiment that does not compile, the
# records of runs cut short (a config.json and a model.json that are not JSON), a model card.
TEXT_FILES = {
    "broken.py": "def get_config(:\n  return None\n",
    "not_json/config.json": "{\"model_cache\": \"\", \n",
    "cut_card/model.json": "{\"kind\": \"gaussian\", \"model\": {\"wid",
    "card_t50/model.json": CARD_T50,
}

# (id, argv, regex the one line must match). "{d}": the data dir; "{w}": the existing work dir.
RUN = ["run", SPIRAL, "--workdir={w}"]
RUN_AR = ["run", DIGITS_AR, "--workdir={w}"]
RUN_DIFF = ["run", DIGITS_DIFF, "--workdir={w}"]
RUN_AVD = ["run", AR_VS_DIFF, "--workdir={w}"]
CLI_CASES = [
    # The experiment file itself.
    ("run-readme", ["run", "README.md", "--workdir={w}"], r"README.md.*not an experiment"),
    ("run-missing", ["run", "experiments/nope.py", "--workdir={w}"], r"nope.py.*not found"),
    ("run-dir", ["run", "experiments", "--workdir={w}"], r"'experiments'.*not an experiment"),
    ("run-no-get-config", ["run", "tests/__init__.py", "--workdir={w}"],
     r"__init__.py.*must define get_config"),
    ("run-data-file", ["run", "{d}/good_points.npz", "--workdir={w}"], r"good_points.npz.*not an"),
    ("run-syntax-error", ["run", "{d}/broken.py", "--workdir={w}"],
     r"broken.py', line 1: invalid syntax \(def get_config\(:\)"),
    # Override syntax and keys.
    ("unknown-key", RUN + ["--config.nosuchkey=1"], r"unknown config key 'nosuchkey'"),
    ("typo-key", RUN + ["--config.train.step=5"], r"'train.step'.*did you mean 'train.steps'"),
    ("section-key", RUN + ["--config.train=5"], r"'train' is a section"),
    ("no-equals", RUN + ["--config.train.steps"], r"train.steps.*key.path=value"),
    ("stray-arg", RUN + ["foo"], r"unexpected argument 'foo'"),
    # Types: bools are not ints, strings are not numbers.
    ("steps-bool", RUN + ["--config.train.steps=True"], r"'train.steps'.*int.*bool"),
    ("steps-float", RUN + ["--config.train.steps=1.5"], r"'train.steps'.*int.*float"),
    ("lr-string", RUN + ["--config.train.learning_rate=fast"], r"'train.learning_rate'.*float"),
    ("width-bool", RUN + ["--config.model.width=False"], r"'model.width'.*int.*bool"),
    ("runs-not-list", RUN + ["--config.sample.runs=7"], r"'sample.runs'.*list.*int"),
    ("remat-int", RUN_AR + ["--config.ar.remat=1"], r"'ar.remat'.*bool"),
    ("attention-impl", RUN_AR + ["--config.ar.attention=cudnn"],
     r"'ar.attention'.*unknown value 'cudnn'; choose from xla, flash"),
    ("decode-attention-impl", RUN_AR + ["--config.ar.decode_attention=triton"],
     r"'ar.decode_attention'.*unknown value 'triton'"),
    # Training ranges (TrainConfig, checked before the work dir is touched).
    ("steps-zero", RUN + ["--config.train.steps=0"], r"'train.steps'.*positive"),
    ("steps-negative", RUN + ["--config.train.steps=-5"], r"'train.steps'.*positive"),
    ("batch-zero", RUN + ["--config.train.batch_size=0"], r"'train.batch_size'.*positive"),
    ("lr-zero", RUN + ["--config.train.learning_rate=0"], r"'train.learning_rate'.*positive"),
    ("ema-one", RUN + ["--config.train.ema_decay=1.0"], r"'train.ema_decay'.*\[0, 1\)"),
    ("warmup-negative", RUN + ["--config.train.warmup_steps=-1"], r"'train.warmup_steps'"),
    ("clip-zero", RUN + ["--config.train.grad_clip=0"], r"'train.grad_clip'.*positive"),
    ("eval-without-val", RUN + ["--config.train.eval_every=10"], r"'train.eval_every'"),
    ("patience-alone", RUN + ["--config.train.patience=3"], r"'train.patience'"),
    ("snapshots-range", RUN + ["--config.train.snapshots=[1.5]"], r"'train.snapshots'"),
    ("flops-negative", RUN + ["--config.train.flops=-1.0"], r"'train.flops'"),
    ("keep-zero", RUN + ["--config.train.keep_checkpoints=0"], r"'train.keep_checkpoints'"),
    ("log-zero", RUN_AR + ["--config.train.log_every=0"], r"'train.log_every'.*positive"),
    # Scale, dtype, model and process settings.
    ("scale-unknown", RUN + ["--config.scale=huge"], r"size 'huge'.*smoke, small, paper"),
    ("scale-unknown-image", RUN_AR + ["--config.scale=huge"],
     r"size 'huge'.*smoke, small, paper, mnist"),
    ("size-unknown", RUN + ["--config=huge"], r"size 'huge'.*sizes are smoke, small, paper \("),
    ("size-quick-not-taken", RUN + ["--config=quick"], r"size 'quick'.*smoke, small, paper \("),
    ("size-quick-old-flag", RUN + ["--config.quick=True"], r"quick=True is now --config=quick"),
    ("size-old-flag-ar", ["run", AR_VS_DIFF, "--config.quick=True"], r"is now --config=quick"),
    ("dtype", RUN + ["--config.dtype=float64"], r"'dtype'.*float64"),
    ("schedule", RUN + ["--config.diffusion.schedule=nope"], r"'diffusion.schedule'.*cosine"),
    ("target", RUN + ["--config.diffusion.target=nope"], r"'diffusion.target'.*eps"),
    ("timesteps", RUN + ["--config.diffusion.num_timesteps=1"], r"'diffusion.num_timesteps'"),
    ("p-uncond-range", RUN + ["--config.diffusion.p_uncond=1.5"], r"'diffusion.p_uncond'"),
    ("width-zero", RUN + ["--config.model.width=0"], r"'model.width'.*positive"),
    ("heads", RUN_AR + ["--config.ar.heads=3"], r"'ar.heads'.*divisible"),
    ("dropout", RUN_AR + ["--config.ar.dropout=1.0"], r"'ar.dropout'.*\[0, 1\)"),
    ("noise-negative", RUN + ["--config.data.noise=-1.0"], r"'data.noise'.*>= 0"),
    ("num-samples-zero", RUN + ["--config.sample.num_samples=0"], r"'sample.num_samples'"),
    ("field-times", RUN + ["--config.sample.field_times=[0.0]"], r"'sample.field_times'"),
    ("negative-class", RUN + ["--config.sample.negative=[0, 5]"], r"'sample.negative'.*0\.\.2"),
    ("negative-class-image", RUN_DIFF + ["--config.sample.negative_class=10"],
     r"'sample.negative_class'.*0\.\.9"),
    # Sampler specs: parsed, checked against the process, unknown names listed.
    ("sampler-unknown", RUN + ["--config.sample.runs=['euler:10']"],
     r"'sample.runs'.*unknown sampler 'euler'.*ddim"),
    ("sampler-zero-steps", RUN + ["--config.sample.runs=['ddim:0']"], r"'sample.runs'.*0"),
    ("sampler-bad-steps", RUN + ["--config.sample.runs=['ddim:x']"], r"'sample.runs'.*'x'"),
    ("sampler-empty", RUN + ["--config.sample.runs=['']"], r"'sample.runs'.*non-empty"),
    ("sampler-option", RUN + ["--config.sample.runs=['ddim:10:foo=1']"],
     r"'sample.runs'.*no option.*foo"),
    ("sampler-guidance", RUN + ["--config.sample.guidance_sampler=nope"],
     r"'sample.guidance_sampler'.*unknown sampler 'nope'"),
    ("sampler-same-nfe", RUN + ["--config.sample.same_nfe=['ddim']"],
     r"'sample.same_nfe'.*needs a step count"),
    ("sampler-ar-on-diffusion", RUN_AR + ["--config.sample.runs.raster=['ddim:5']"],
     r"'sample.runs.raster'.*unknown sampler 'ddim'"),
    ("ardm-k-zero", RUN_AVD + ["--config.sample.runs.ardm=['ardm:k=0']"],
     r"'sample.runs.ardm'.*k"),
    ("ardm-k-negative", RUN_AVD + ["--config.sample.runs.ardm=['ardm:k=-1']"],
     r"'sample.runs.ardm'.*k"),
    ("ardm-k-too-big", RUN_AVD + ["--config.compute_specs.ardm=['ardm:k=65']"],
     r"'compute_specs.ardm'.*k"),
    ("budget-steps-zero", RUN_AR + ["--config.sample.budget_steps=[0]"],
     r"'sample.budget_steps'.*>= 1"),
    ("budget-steps-big", RUN_AR + ["--config.sample.budget_steps=[1000]"],
     r"'sample.budget_steps'.*64"),
    ("ks-zero", ["run", "experiments/independent_pixels.py", "--workdir={w}", "--config.ks=[0]"],
     r"'ks'.*1\.\.64"),
    ("ks-negative", ["run", "experiments/independent_pixels.py", "--workdir={w}",
                     "--config.ks=[-1, 1]"], r"'ks'.*1\.\.64"),
    ("budget-reference", RUN_AVD + ["--config.budget_reference=nope"], r"'budget_reference'"),
    ("training-seeds", RUN_AVD + ["--config.training_seeds=[]"], r"'training_seeds'"),
    ("patch-size", RUN_AVD + ["--config.dit_patch_size=3"], r"'dit_patch_size'.*8"),
    ("families-unknown", RUN_AVD + ["--config.families=['raster', 'gan']"],
     r"'families'.*distinct names out of"),
    ("reveal-nfe-odd", RUN_AVD + ["--config.reveal_nfe=3"], r"'reveal_nfe'.*even divisor of the 64"),
    ("budget-tflop-negative", RUN_AVD + ["--config.budget_tflop=-1.0"], r"'budget_tflop'.*>= 0"),
    ("upscale-divisors", RUN_AVD + ["--config.upscale.divisors=[4, 3]"],
     r"'upscale.divisors'.*multiple"),
    ("masked-spec-resample", RUN_AVD + ["--config.sample.runs.masked=['masked:4:resample=1.5']"],
     r"'sample.runs.masked'.*resample"),
    # What this machine must offer before anything is written: folders and data.
    ("model-cache-is-a-file", RUN + ["--config.model_cache=config.json"],
     r"'model_cache'.*work/config.json is a file, not a directory"),
    ("workdir-is-a-file", ["run", SPIRAL, "--workdir={w}/metrics.jsonl"],
     r"cannot create the directory .*metrics.jsonl: .*metrics.jsonl is a file, not a directory"),
    ("workdir-cannot-be-made", ["run", SPIRAL, "--workdir=/proc/ardiff-run"],
     r"cannot create the directory /proc/ardiff-run: /proc takes no new folders"),
    ("tfds-not-prepared", RUN_AR + ["--config.dataset=mnist"],
     r"tfds dataset 'mnist' is not prepared: searched .*/tfds/mnist"),
    # Guidance that cannot work: the null label was never trained.
    ("guidance-p-uncond-0", RUN + ["--config.diffusion.p_uncond=0.0"],
     r"'diffusion.p_uncond'.*null label"),
    ("guidance-p-uncond-0-ar", RUN_AR + ["--config.ar.p_uncond=0.0"], r"'ar.p_uncond'.*null"),
    ("guidance-p-uncond-0-unet", RUN_DIFF + ["--config.diffusion.p_uncond=0.0"],
     r"'diffusion.p_uncond'.*null"),
    # Data: sizes, names, files.
    ("spiral-smaller-than-batch", RUN + ["--config.data.num_train=3"],
     r"'data.num_train'.*3.*batch_size 512"),
    ("npz-smaller-than-batch", RUN + ["--config.data.path={d}/few_points.npz"],
     r"few_points.npz.*27 training examples.*batch_size 512"),
    ("dataset-unknown", RUN_AR + ["--config.dataset=mnistx"], r"'dataset'.*mnistx.*digits"),
    ("dataset-unknown-spiral", RUN + ["--config.dataset=digits"], r"'dataset'.*digits.*spiral"),
    ("npz-without-path", RUN_AR + ["--config.dataset=npz"], r"'data.path'.*dataset=npz"),
    ("npz-without-path-spiral", RUN + ["--config.dataset=npz"], r"'data.path'.*dataset=npz"),
    ("path-without-npz", RUN_AR + ["--config.data.path={d}/good_images.npz"],
     r"'data.path'.*dataset=npz"),
    ("npz-missing", RUN + ["--config.data.path={d}/missing.npz"], r"missing.npz.*does not exist"),
    ("npz-not-npz", RUN + ["--config.data.path=README.md"], r"README.md.*not an .npz"),
    ("npz-no-x", RUN_AR + ["--config.dataset=npz", "--config.data.path={d}/no_x.npz"],
     r"no_x.npz.*'x'.*images"),
    ("npz-wrap", RUN_AR + ["--config.dataset=npz", "--config.data.path={d}/wrap_levels.npz"],
     r"wrap_levels.npz.*'x'.*300.*256"),
    ("npz-above-levels", RUN_DIFF + ["--config.dataset=npz",
                                     "--config.data.path={d}/above_levels.npz"],
     r"above_levels.npz.*'x'.*level \d.*\[0, 4\)"),
    ("npz-label-minus1", RUN_AR + ["--config.dataset=npz",
                                   "--config.data.path={d}/label_minus1.npz"],
     r"label_minus1.npz.*'y'.*label -1 at index 79"),
    ("npz-points-for-images", RUN_AR + ["--config.dataset=npz",
                                        "--config.data.path={d}/good_points.npz"],
     r"good_points.npz.*images"),
    ("npz-images-for-points", RUN + ["--config.data.path={d}/good_images.npz"],
     r"good_images.npz.*points"),
    ("npz-nan", RUN + ["--config.data.path={d}/nan_points.npz"],
     r"nan_points.npz.*'x'.*not finite.*index 599"),
    ("npz-3d-points", RUN + ["--config.data.path={d}/points_3d.npz"],
     r"points_3d.npz.*\[N, 2\]"),
    ("npz-odd-size-unet", RUN_DIFF + ["--config.dataset=npz",
                                      "--config.data.path={d}/odd_size_images.npz"],
     r"'unet.channel_mult'.*divisible by 2.*7x7"),
    ("npz-too-few-classes", RUN_DIFF + ["--config.dataset=npz",
                                        "--config.data.path={d}/good_images.npz"],
     r"'sample.negative_class'.*0\.\.2"),
    # ardiff config: the same checks, nothing written.
    ("config-readme", ["config", "README.md"], r"README.md.*not an experiment"),
    ("config-bool", ["config", SPIRAL, "--config.train.steps=True"], r"'train.steps'"),
    ("config-unknown", ["config", SPIRAL, "--config.nope=1"], r"unknown config key 'nope'"),
    ("config-range", ["config", DIGITS_AR, "--config.train.batch_size=-1"],
     r"'train.batch_size'"),
    # ardiff sample: arguments checked before a model is loaded.
    ("sample-missing", ["sample", "{d}/nowhere", "--spec=ddim:5", "--out={d}/s.npz"],
     r"nowhere.*does not exist"),
    ("sample-no-model", ["sample", "{w}", "--spec=ddim:5", "--out={d}/s.npz"],
     r"no trained model"),
    ("sample-out-png", ["sample", "{w}", "--spec=ddim:5", "--out={d}/s.png"], r"--out.*\.npz"),
    ("sample-num-zero", ["sample", "{w}", "--spec=ddim:5", "--num=0", "--out={d}/s.npz"],
     r"--num must be >= 1"),
    ("sample-spec-syntax", ["sample", "{w}", "--spec=ddim:5:6", "--out={d}/s.npz"],
     r"--spec.*two step counts"),
    ("sample-negative-alone", ["sample", "{w}", "--spec=ddim:5", "--negative=1",
                               "--out={d}/s.npz"], r"needs a guidance scale"),
    ("sample-out-dir", ["sample", "{w}", "--spec=ddim:5", "--out={w}/out.npz"], r"is a directory"),
    ("sample-no-spec", ["sample", "{w}", "--out={d}/s.npz"], r"--spec"),
    ("sample-num-text", ["sample", "{w}", "--spec=ddim:5", "--num=many", "--out={d}/s.npz"],
     r"--num.*many"),
    ("sample-spec-letters", ["sample", "{w}", "--spec=ddim:abc", "--out={d}/s.npz"],
     r"--spec: sampling spec 'ddim:abc' has a part 'abc' that is neither a step count \(which "
     r"must be an integer, like 50\) nor an option \(name=value, like eta=0.5\)$"),
    # ardiff eval: the same checks as sample (it writes nothing).
    ("eval-missing", ["eval", "{d}/nowhere", "--spec=ddim:5"], r"nowhere.*does not exist"),
    ("eval-no-model", ["eval", "{w}", "--spec=ddim:5"], r"no trained model"),
    ("eval-spec-syntax", ["eval", "{w}", "--spec=ddim::5"],
     r"--spec: sampling spec 'ddim::5' has an empty part"),
    ("eval-num-small", ["eval", "{w}", "--spec=ddim:5", "--num=1"], r"--num must be >= 4"),
    ("eval-no-spec", ["eval", "{w}"], r"--spec"),
    # ardiff sample: the records of a run cut short, named.
    ("sample-config-not-json", ["sample", "{d}/not_json", "--spec=ddim:5", "--out={d}/s.npz"],
     r"not_json/config.json is not valid JSON \(Expecting"),
    ("sample-card-cut-short", ["sample", "{d}/cut_card", "--spec=ddim:5", "--out={d}/s.npz"],
     r"cut_card/model.json is not valid JSON \(Unterminated string"),
    # ardiff sample: the spec against the model's own settings, before its checkpoint is read.
    ("sample-steps-absurd", ["sample", "{d}/card_t50", "--spec=ddim:100000000",
                             "--out={d}/s.npz"],
     r"'ddim': 100000000 steps is more than this model's 50 training timesteps"),
    ("sample-steps-one-too-many", ["sample", "{d}/card_t50", "--spec=heun:51", "--out={d}/s.npz"],
     r"'heun': 51 steps .* at most 50"),
    ("sample-label-before-checkpoint", ["sample", "{d}/card_t50", "--spec=ddim:50", "--label=4",
                                        "--out={d}/s.npz"], r"--label must lie in 0\.\.2"),
    # ardiff bench.
    ("bench-unknown", ["bench", "nope"], r"invalid choice: 'nope'"),
    ("bench-extra", ["bench", "ar", "--config.x=1"], r"unexpected arguments"),
    ("bench-out-dir", ["bench", "ar", "--quick", "--out={d}/no/such/dir/t.md"],
     r"--out.*no/such/dir.*does not exist"),
    ("no-command", [], r"command"),
]


def _dataset(**changes):
  """A small valid image Dataset with `changes` applied (the API cases break one field)."""
  from ardiff.data import Dataset

  fields = dict(name="toy", kind="image", x_train=_images(30).astype(np.uint8),
                y_train=np.arange(30) % 3, x_test=_images(10, seed=1).astype(np.uint8),
                y_test=np.arange(10) % 3, num_classes=3, num_levels=4)
  fields.update(changes)
  return Dataset(**fields)


def _points(**changes):
  from ardiff.data import Dataset

  fields = dict(name="pts", kind="points", x_train=np.zeros((30, 2), np.float32),
                y_train=np.zeros(30, np.int32), x_test=np.zeros((10, 2), np.float32),
                y_test=np.zeros(10, np.int32), num_classes=1)
  fields.update(changes)
  return Dataset(**fields)


def _load(name, **kwargs):
  from ardiff.data import load_dataset

  return load_dataset(name, **kwargs)


def _npz(name):
  return lambda d: _load("npz", path=os.path.join(d, name))


# (id, function of the data dir, regex the ArdiffError's message must match).
API_CASES = [
    ("ds-test-level", lambda d: _dataset(x_test=np.full((10, 8, 8, 1), 4, np.uint8)),
     r"dataset 'toy': field 'x_test' has level 4 at index 0; levels must lie in \[0, 4\)"),
    ("ds-train-level", lambda d: _dataset(x_train=np.full((30, 8, 8, 1), 9, np.uint8)),
     r"'x_train' has level 9"),
    ("ds-float-images", lambda d: _dataset(x_train=np.zeros((30, 8, 8, 1), np.float32)),
     r"'x_train'.*integer"),
    ("ds-label-minus1", lambda d: _dataset(y_train=np.r_[np.zeros(29, int), -1]),
     r"'y_train' has label -1 at index 29; labels must lie in \[0, 3\)"),
    ("ds-label-high", lambda d: _dataset(y_test=np.full(10, 3)),
     r"'y_test' has label 3 at index 0; labels must lie in \[0, 3\)"),
    ("ds-label-float", lambda d: _dataset(y_train=np.full(30, 0.5)), r"'y_train'.*integer"),
    ("ds-length", lambda d: _dataset(y_train=np.zeros(29, int)), r"'y_train'.*29.*30"),
    ("ds-shape-mismatch", lambda d: _dataset(x_test=np.zeros((10, 4, 4, 1), np.uint8)),
     r"'x_test'.*\(4, 4, 1\).*\(8, 8, 1\)"),
    ("ds-rank3", lambda d: _dataset(x_train=np.zeros((30, 8, 8), np.uint8)), r"\[N, H, W, C\]"),
    ("ds-levels-300", lambda d: _dataset(num_levels=300), r"num_levels.*2\.\.256"),
    ("ds-levels-1", lambda d: _dataset(num_levels=1), r"num_levels.*2\.\.256"),
    ("ds-kind", lambda d: _dataset(kind="audio"), r"kind.*'points' or 'image'"),
    ("ds-classes-zero", lambda d: _dataset(num_classes=0), r"num_classes.*>= 1"),
    ("ds-empty-train", lambda d: _dataset(x_train=np.zeros((0, 8, 8, 1), np.uint8),
                                          y_train=np.zeros(0, int)), r"'x_train'.*no examples"),
    ("pts-nan", lambda d: _points(x_train=np.r_[np.zeros((29, 2)), [[np.nan, 1]]]),
     r"'x_train' is not finite at index 29"),
    ("pts-inf-test", lambda d: _points(x_test=np.r_[[[np.inf, 1]], np.zeros((9, 2))]),
     r"'x_test' is not finite at index 0"),
    ("pts-rank3", lambda d: _points(x_train=np.zeros((30, 2, 1))), r"points.*\[N, D\]"),
    ("npz-missing", _npz("missing.npz"), r"missing.npz.*does not exist"),
    ("npz-no-x", _npz("no_x.npz"), r"no_x.npz.*'x'.*\['images'\]"),
    ("npz-wrap", _npz("wrap_levels.npz"), r"wrap_levels.npz: field 'x' has level 300.*256"),
    ("npz-above-levels", _npz("above_levels.npz"),
     r"above_levels.npz: field 'x' has level \d+ at index \d+; levels must lie in \[0, 4\)"),
    ("npz-levels-scalar", _npz("bad_levels_scalar.npz"), r"'levels'.*2\.\.256"),
    ("npz-negative-levels", _npz("negative_levels.npz"), r"'x' has level -1"),
    ("npz-float-images", _npz("float_images.npz"), r"float_images.npz.*'x'.*integer"),
    ("npz-rank3", _npz("rank3.npz"), r"rank3.npz.*'x'.*\[N, D\].*\[N, H, W, C\]"),
    ("npz-label-minus1", _npz("label_minus1.npz"),
     r"label_minus1.npz: field 'y' has label -1 at index 79; labels must lie in \[0, "),
    ("npz-label-float", _npz("label_float.npz"), r"label_float.npz.*'y'.*integer"),
    ("npz-label-2d", _npz("label_2d.npz"), r"label_2d.npz.*'y'.*\[N\]"),
    ("npz-label-short", _npz("label_short.npz"), r"label_short.npz.*'y'.*79.*80"),
    ("npz-nan", _npz("nan_points.npz"), r"nan_points.npz: field 'x' is not finite at index 599"),
    ("npz-inf", _npz("inf_points.npz"), r"inf_points.npz: field 'x' is not finite"),
    ("npz-one", _npz("one_example.npz"), r"one_example.npz.*at least 2"),
    ("npz-empty", _npz("empty.npz"), r"empty.npz.*at least 2"),
    ("npz-object", _npz("object.npz"), r"object.npz.*"),
    ("npz-not-npz", lambda d: _load("npz", path=os.path.join(ROOT, "README.md")),
     r"README.md.*not an .npz"),
    ("npz-test-fraction", lambda d: _load("npz", path=os.path.join(d, "good_points.npz"),
                                          test_fraction=1.5), r"test_fraction.*\(0, 1\)"),
    ("load-unknown", lambda d: _load("nope"), r"unknown dataset 'nope'.*digits"),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("bad_data")
  for name, make in FILES.items():
    np.savez(d / name, **make())
  for name, text in TEXT_FILES.items():
    (d / name).parent.mkdir(exist_ok=True)
    (d / name).write_text(text)
  return str(d)


@pytest.fixture
def workdir(tmp_path):
  """A work dir from an earlier run: its files must survive every failed command."""
  w = tmp_path / "work"
  w.mkdir()
  (w / "config.json").write_text('{"from": "an earlier run"}\n')
  (w / "metrics.jsonl").write_text('{"step": 1}\n')
  (w / "out.npz").mkdir()  # a directory named like an output file
  return w


def snapshot(*roots) -> dict:
  """Every file under roots: relative path -> bytes."""
  files = {}
  for root in map(str, roots):
    for base, dirs, names in os.walk(root):
      files.update({os.path.join(base, n): open(os.path.join(base, n), "rb").read()
                    for n in names})
      files.update({os.path.join(base, n) + "/": b"" for n in dirs})
  return files


@pytest.fixture
def no_run(monkeypatch):
  """Experiments whose run() fails the test: a bad input must stop before it."""
  real = overrides.load_experiment

  def load(path):
    module = real(path)

    def run(config, workdir):
      raise AssertionError(f"{path}: run() reached; validation let the input through")

    module.run = run
    return module

  monkeypatch.setattr(overrides, "load_experiment", load)
  monkeypatch.delenv("ARDIFF_DEBUG", raising=False)
  monkeypatch.chdir(ROOT)


def cli_main(argv) -> int:
  """ardiff.cli.main, with argparse's own exit (usage errors) as its status."""
  try:
    return cli.main(argv)
  except SystemExit as e:
    return e.code


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_is_one_line_and_changes_nothing(argv, pattern, data_dir, workdir, no_run,
                                                      capsys, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", os.path.join(data_dir, "tfds"))  # nothing prepared there
  before = snapshot(workdir.parent, data_dir)
  argv = [a.format(d=data_dir, w=workdir) for a in argv]
  assert cli_main(argv) == 2
  out, err = capsys.readouterr()
  assert "Traceback" not in err and out == ""
  lines = err.strip().splitlines()
  if not lines[0].startswith("usage:"):  # argparse prints its usage above the error
    assert len(lines) == 1 and lines[0].startswith("ardiff: "), err
  assert re.search(pattern, lines[-1]), lines[-1]
  assert snapshot(workdir.parent, data_dir) == before


@pytest.mark.parametrize("make,pattern", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_bad_data_raises_one_line_naming_the_field(make, pattern, data_dir):
  with pytest.raises(ArdiffError, match=pattern) as info:
    make(data_dir)
  assert "\n" not in str(info.value)


def test_table_size():
  """The issue asks for at least 60 bad inputs."""
  assert len(CLI_CASES) + len(API_CASES) >= 60 and len(CLI_CASES) >= 60


@pytest.fixture
def recorded_run(monkeypatch):
  """Experiments whose run() only records its call (config and the work dir's files then)."""
  calls = []
  real = overrides.load_experiment

  def load(path):
    module = real(path)
    module.run = lambda config, workdir: calls.append((config, _listing(workdir)))
    return module

  monkeypatch.setattr(overrides, "load_experiment", load)
  monkeypatch.chdir(ROOT)
  return calls


def _listing(workdir) -> list[str]:
  """The work dir's files, less the lock file `ardiff run` holds (ardiff.workdir)."""
  return sorted(n for n in os.listdir(workdir) if n != LOCK_FILE)


def test_run_writes_config_only_when_valid_and_changed(tmp_path, recorded_run, capsys):
  work = tmp_path / "new" / "work"
  run = ["run", SPIRAL, f"--workdir={work}"]
  assert cli_main(run + ["--config.train.steps=0"]) == 2
  assert not (tmp_path / "new").exists()  # validation comes before the work dir
  assert cli_main(run + ["--config.train.steps=5"]) == 0
  assert recorded_run[-1][1] == ["config.json"]  # written before run() starts
  first = (work / "config.json").read_text()
  assert '"steps": 5' in first
  assert cli_main(run + ["--config.train.steps=5"]) == 0  # same config: nothing new
  assert _listing(work) == ["config.json"]
  assert cli_main(run + ["--config.train.steps=6"]) == 0  # changed: the old one is kept
  kept = [n for n in _listing(work) if n != "config.json"]
  assert len(kept) == 1 and re.fullmatch(r"config\.\d{8}T\d{6}\.\d{6}Z\.json", kept[0])
  assert (work / kept[0]).read_text() == first
  assert '"steps": 6' in (work / "config.json").read_text()
  capsys.readouterr()


def test_unexpected_errors_keep_their_traceback_and_debug_shows_bad_input(tmp_path, monkeypatch):
  real = overrides.load_experiment

  def load(path):
    module = real(path)

    def run(config, workdir):
      raise RuntimeError("a bug, not bad input")

    module.run = run
    return module

  monkeypatch.setattr(overrides, "load_experiment", load)
  monkeypatch.chdir(ROOT)
  monkeypatch.delenv("ARDIFF_DEBUG", raising=False)
  with pytest.raises(RuntimeError, match="a bug"):
    cli.main(["run", SPIRAL, f"--workdir={tmp_path}", "--config.train.steps=5"])
  bad = ["config", SPIRAL, "--config.train.steps=True"]
  with pytest.raises(ArdiffError, match="train.steps"):
    cli.main(bad + ["--debug"])
  monkeypatch.setenv("ARDIFF_DEBUG", "1")
  with pytest.raises(ArdiffError, match="train.steps"):
    cli.main(bad)


def test_bad_input_end_to_end_exits_2_with_one_line(tmp_path):
  """The real process: exit status 2 and one line on stderr, no traceback."""
  env = dict(os.environ, PYTHONPATH=ROOT, ARDIFF_DEBUG="")
  done = subprocess.run([sys.executable, "-m", "ardiff.cli", "run", "README.md",
                         f"--workdir={tmp_path / 'w'}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
  assert "README.md" in done.stderr and not (tmp_path / "w").exists()


def test_own_images_from_the_cli_config(data_dir, monkeypatch, capsys):
  """dataset=npz with data.path: the image experiments validate on the file's images."""
  from ardiff.configs import get_experiment_config
  from ardiff.presets import config_data_spec, config_dataset

  monkeypatch.chdir(ROOT)
  path = os.path.join(data_dir, "good_images.npz")
  for experiment in (DIGITS_DIFF, DIGITS_AR):  # ar_vs_diffusion: its smoke run, by hand
    extra = ["sample.negative_class=1"] if experiment == DIGITS_DIFF else []
    _, c = get_experiment_config(experiment, ["dataset=npz", f"data.path={path}", *extra])
  spec = config_data_spec(c, "image")
  assert (spec.kind, spec.shape, spec.num_levels, spec.num_classes) == ("image", (8, 8, 1), 4, 3)
  data = config_dataset(c)
  assert data.x_train.dtype == np.uint8 and len(data.x_train) + len(data.x_test) == 80
  np.testing.assert_array_equal(np.sort(np.r_[data.y_train, data.y_test]), np.sort(np.arange(80) % 3))
  assert cli_main(["config", DIGITS_AR, "--config.dataset=npz", f"--config.data.path={path}"]) == 0
  assert '"path": "' + path in capsys.readouterr().out


def test_npz_levels_default_and_name_follows_contents(tmp_path):
  """No `levels`: the largest value + 1; no `y`: one class; the name hashes the contents, so
  two files of one name never share a cached model."""
  from ardiff.data import load_dataset

  x = _images(levels=5)
  np.savez(tmp_path / "a.npz", x=x)
  first = load_dataset("npz", path=str(tmp_path / "a.npz"))
  assert first.num_levels == 5 and first.num_classes == 1
  np.savez(tmp_path / "a.npz", x=x[::-1])
  second = load_dataset("npz", path=str(tmp_path / "a.npz"))
  assert first.name.startswith("a-") and second.name.startswith("a-")
  assert first.name != second.name
