"""The central comparison: sample quality against network evaluations, AR and diffusion on one
axis, at matched training compute, over training seeds, with FD, precision and recall.

  ardiff run experiments/ar_vs_diffusion.py --workdir=runs/ar_vs_diffusion
  ardiff run experiments/ar_vs_diffusion.py --workdir=runs/ar_vs_diffusion_quick --config=quick

Six models (raster AR, ARDM, masked diffusion, upscale ARDM, diffusion with the same
transformer and with a UNet), each trained from `training_seeds` on the same FLOP budget
with early stopping on held-out validation loss, sampled by every spec of `sample.runs`:
FD, precision and recall against NFE (quality_vs_nfe.png, results.md), against training
compute (quality_vs_compute.png), sample grids, reveal.png, training_curves.png and
training.md (budget, convergence, held-out bits per pixel from each process's `nll_bound`).
Samples are cached beside each model, so a rerun draws only what is new. `--config=quick`
takes one seed, a quarter of the budget and two solvers (~10 min on 2 cores).
The design, the protocol and the measurements behind its settings (EMA warm-up, learning
rates): docs/ar_vs_diffusion.md.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import ml_collections
import numpy as np

from ardiff import experiment_helpers, model_cache, sample_cache
from ardiff.configs import require, sized
from ardiff.metrics import held_out
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes.gaussian import samplers
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results
from ardiff.report.tables import format_mean_std, mean_std, pareto_front
from ardiff.train import TrainConfig, num_params, snapshot_params, train_step_flops
from ardiff.train.progress import last_quarter_gain, validation_curve

SMOKE = ["budget_steps=6", "budget_tflop=0", "train.log_every=2", "train.eval_every=2",
         "train.val_examples=64", "train.warmup_steps=2", "ar.width=16",
         "ar.depth=1", "ar.heads=2", "unet.base_channels=8", "unet.channel_mult=[1]",
         "diffusion.num_timesteps=8", "num_samples=40", "training_seeds=[0]",
         "train.snapshots=[0.5]",
         "sample.runs.raster=['raster']",
         "sample.runs.ardm=['ardm:k=64', 'ardm:k=64:order=contiguous']",
         "sample.runs.diffusion_transformer=['ddim:2']",
         "sample.runs.diffusion_unet=['ddim:2', 'dpmpp_2m:3']",
         "sample.runs.masked=['masked:2', 'confidence:2:noise=4.5']",
         "compute_specs.ardm=['ardm:k=64']",
         "compute_specs.masked=['masked:2']", "reveal_nfe=2",
         "sample.runs.upscale=['upscale:k=64']", "compute_specs.upscale=['upscale:k=64']",
         "compute_specs.diffusion_transformer=['ddim:2']",
         "compute_specs.diffusion_unet=['ddim:2']",
         "classifier_steps=20"]


@dataclasses.dataclass(frozen=True)
class Family:
  """One model of the comparison: the process kind `ardiff.build` makes and its sections."""

  name: str
  kind: str
  section: str  # the model section of the config
  extras: tuple[str, ...]  # further config sections its builder takes
  label: str

  @property
  def gaussian(self) -> bool:
    return self.kind.startswith("gaussian")


FAMILIES = (Family("raster", "raster", "ar", (), "raster AR"),
            Family("ardm", "ardm", "ar", (), "ARDM"),
            Family("diffusion_transformer", "gaussian_transformer", "ar", ("diffusion",),
                   "diffusion (transformer)"),
            Family("diffusion_unet", "gaussian", "unet", ("diffusion",), "diffusion (UNet)"),
            Family("masked", "masked", "ar", ("masking",), "masked diffusion"),
            Family("upscale", "upscale", "ar", ("upscale",), "upscale ARDM"))
GAUSSIAN = tuple(f for f in FAMILIES if f.gaussian)
SOLVERS = {"ddpm": "DDPM", "ddim": "DDIM", "heun": "Heun", "dpmpp_2m": "DPM-Solver++ 2M"}


@sized(scales=SCALES, smoke=SMOKE, quick=lambda c: quick_config(c))
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True, diffusion=True)
  if scale == "small":
    # 12 models (4 x 3 seeds) trained to convergence on 2 CPU cores: transformers of width 32
    # (a quarter of width 64's FLOPs); the UNet keeps its default size.
    c.ar.width = 32
  c.training_seeds = [0, 1, 2]
  c.num_samples = 300  # per training seed
  c.sample_batch = 0  # samples per network call; 0: all num_samples at once
  # Test images scored for bits per pixel (0: the whole test split). The ARDM bound runs the
  # network once per pixel of each image (784 passes at 784 tokens on MNIST).
  c.test_bits_examples = 0
  # The budget in FLOPs for every model: `budget_tflop` if > 0, else `budget_steps` train steps
  # of the reference model as XLA costs them at run time. The small scale states it in FLOPs:
  # 1.385012928 TFLOP = 1500 steps of raster AR (width 32, batch 64) as XLA costed it with
  # softmax attention. Derived at run time instead, every model's key followed XLA's count of
  # another model: moving attention to jax.nn.dot_product_attention added 8192 FLOPs to that
  # step's 9.2e8 (0.0009%), and all 12 trained models would have retrained.
  c.budget_reference = "raster"
  c.budget_steps = 1500
  c.budget_tflop = 1.385012928 if scale == "small" else 0.0
  # Validation: the last 200 of the 1500 training digits; patience 4 x 100 steps.
  c.train.val_examples = 200
  c.train.eval_every = 100
  c.train.patience = 4
  c.train.log_every = 100
  c.train.snapshots = (0.125, 0.25, 0.5)
  # Per-family learning rates; families not listed use train.learning_rate. Measured, not
  # guessed: see "learning rates" in the module docstring.
  c.learning_rates = ml_collections.ConfigDict({"diffusion_transformer": 3e-3})
  # Masked diffusion's forward process (`ardiff.processes.masked`): the cosine schedule
  # (MaskGIT's), which reveals few pixels first and many last when sampling.
  c.masking = ml_collections.ConfigDict({"schedule": "cosine", "power": 2.0})
  # The coarse-to-fine ARDM (`ardiff.processes.autoregressive.upscale`): each pixel's level
  # // 4 first (5 bins of the 17 levels), then the level: 2 stages of 64 pixels.
  c.upscale = ml_collections.ConfigDict({"divisors": [4, 1]})
  # Samples kept beside each model (`ardiff.sample_cache`): a rerun that adds a row draws only
  # the new one.
  c.cache_samples = True
  # Which families to train and sample (all by default); budget_reference is costed anyway.
  c.families = [f.name for f in FAMILIES]
  # reveal.png: one sample generated by each process at (about) this many network evaluations.
  c.reveal_nfe = 8
  ks = [1, 2, 4, 8, 16, 32, 64]
  nfes = [4, 8, 16, 32, 64, 128]
  if scale != "small":  # paper and mnist
    c.num_samples = 2000
    c.budget_steps = 50_000
    c.train.val_examples = 5000 if scale == "mnist" else 200
    c.train.eval_every = 1000
    nfes = nfes + [256]
  if scale == "mnist":  # each k divides the 784 pixels; 2x2 patches for the transformer
    ks = [1, 4, 16, 49, 196, 784]
    c.sample_batch = 250
  c.dit_patch_size = 2 if scale == "mnist" else 1
  # Confidence decoding (`confidence:S`): the model's most confident pixels first; noise 4.5
  # is MaskGIT's annealed Gumbel "choice temperature" (noise 0: purely by confidence).
  steps = [n for n in nfes if n <= 32]
  maskgit = [f"confidence:{n}:noise=4.5" for n in steps]
  c.sample = ml_collections.ConfigDict({"runs": {
      "raster": ["raster"],
      "ardm": ([f"ardm:k={k}" for k in ks] + [f"ardm:k={k}:order=contiguous" for k in ks[1:]]
               + [f"confidence:{n}" for n in steps] + maskgit),
      "diffusion_transformer": _diffusion_runs(nfes),
      "diffusion_unet": _diffusion_runs(nfes),
      # ancestral sampling, and with the re-sampling corrector (2S - 1 NFE)
      "masked": ([f"masked:{n}" for n in nfes if n <= 64]
                 + [f"masked:{n}:resample=0.1" for n in steps] + maskgit),
      "upscale": [f"upscale:k={k}" for k in ks]}})
  # Sampled at every budget snapshot; the quality-vs-compute figure draws each family's best.
  c.compute_specs = ml_collections.ConfigDict({
      "raster": ["raster"], "ardm": ["ardm:k=1", "ardm:k=4"],
      "diffusion_transformer": ["ddpm:128", "dpmpp_2m:16"],
      "diffusion_unet": ["ddpm:128", "dpmpp_2m:16"],
      "masked": ["masked:8", "masked:32"],
      "upscale": ["upscale:k=2", "upscale:k=8"]})
  return c


def _diffusion_runs(nfes):
  """Every solver at each NFE, or where a solver cannot spend it exactly (Heun's 2N - 1 misses
  the even budgets) at the largest budget below it that it can (`samplers.steps_for_nfe`)."""
  out = []
  for solver in SOLVERS:
    steps = [_steps_within(solver, n) for n in nfes]
    out += [f"{solver}:{k}" for k in dict.fromkeys(steps)]
  return out


def _steps_within(solver: str, nfe: int) -> int:
  """The most steps of `solver` that cost at most `nfe` network evaluations."""
  for budget in range(nfe, 0, -1):
    try:
      return samplers.steps_for_nfe(solver, budget)
    except ValueError:  # unreachable: one evaluation fewer
      continue
  raise ValueError(f"sampler {solver!r}: no step count fits in {nfe} evaluations")


def quick_config(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The quick look (~10 min on 2 cores): one training seed, a quarter of the budget, a few
  samplers."""
  c = ml_collections.ConfigDict(c.to_dict())
  c.training_seeds = c.training_seeds[:1]
  c.budget_steps = max(1, c.budget_steps // 4)
  c.budget_tflop = c.budget_tflop / 4
  c.num_samples = min(c.num_samples, 200)
  c.train.snapshots = ()
  c.sample.runs.ardm = [s for s in c.sample.runs.ardm if parse_spec(s).get("k") in (1, 8, 64)
                        or parse_spec(s).steps in (8,)]
  c.sample.runs.masked = [s for s in c.sample.runs.masked if parse_spec(s).steps in (8, 32)]
  c.sample.runs.upscale = [s for s in c.sample.runs.upscale if parse_spec(s).get("k") in (2, 16)]
  for name in ("diffusion_transformer", "diffusion_unet"):
    c.sample.runs[name] = [s for s in c.sample.runs[name]
                           if parse_spec(s).name in ("ddim", "dpmpp_2m")]
  return c


def _model_section(c, family: Family):
  section = c[family.section]
  if family.kind == "gaussian_transformer":
    section = ml_collections.ConfigDict(dict(section.to_dict(), patch_size=c.dit_patch_size))
  return section


def _extra(c, family: Family) -> dict:
  return {name: c[name] for name in family.extras}


def validate(c: ml_collections.ConfigDict) -> None:
  from ardiff import build

  spec = validate_image_config(c)
  names = [f.name for f in FAMILIES]
  require(len(c.families) >= 1 and set(c.families) <= set(names)
          and len(set(c.families)) == len(c.families), "families",
          f"must be distinct names out of {names}, got {list(c.families)}")
  require(len(c.training_seeds) >= 1, "training_seeds", "needs at least one training seed")
  require(len(set(c.training_seeds)) == len(c.training_seeds), "training_seeds",
          f"must be distinct, got {list(c.training_seeds)}")
  require(c.num_samples >= 5, "num_samples", "must be >= 5 (k-NN precision/recall, k=3)")
  require(isinstance(c.test_bits_examples, int) and c.test_bits_examples >= 0,
          "test_bits_examples", f"must be an integer >= 0 (0: the whole test split), got "
          f"{c.test_bits_examples!r}")
  require(c.sample_batch >= 0, "sample_batch", f"must be >= 0 (0: all at once), got "
          f"{c.sample_batch}")
  require(c.budget_reference in names, "budget_reference",
          f"must be one of {names}, got {c.budget_reference!r}")
  require(isinstance(c.budget_steps, int) and c.budget_steps >= 1, "budget_steps",
          f"must be an integer >= 1, got {c.budget_steps!r}")
  require(isinstance(c.budget_tflop, (int, float)) and not isinstance(c.budget_tflop, bool)
          and c.budget_tflop >= 0, "budget_tflop",
          f"must be a number >= 0 (0: budget_steps of budget_reference), got {c.budget_tflop!r}")
  require(c.dit_patch_size >= 1, "dit_patch_size", f"must be >= 1, got {c.dit_patch_size}")
  pixels = int(np.prod(spec.shape))
  require(isinstance(c.reveal_nfe, int) and (c.reveal_nfe == 0 or c.reveal_nfe % 2 == 0
                                             and pixels % c.reveal_nfe == 0), "reveal_nfe",
          f"must be 0 (no reveal figure) or an even divisor of the {pixels} pixels (every "
          f"process then takes exactly that many steps), got {c.reveal_nfe!r}")
  require(isinstance(c.cache_samples, bool), "cache_samples",
          f"must be True or False, got {c.cache_samples!r}")
  require(all(d % c.dit_patch_size == 0 for d in spec.shape[:2]), "dit_patch_size",
          f"{c.dit_patch_size} must divide the image height and width "
          f"({spec.shape[0]}x{spec.shape[1]})")
  for name, lr in c.learning_rates.items():
    require(name in names, f"learning_rates.{name}", f"not a family; families are {names}")
    require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0,
            f"learning_rates.{name}", f"must be a positive number, got {lr!r}")
  for key in ("runs", "compute"):
    specs = c.sample.runs if key == "runs" else c.compute_specs
    prefix = "sample.runs" if key == "runs" else "compute_specs"
    require(set(specs) == set(names), prefix, f"needs spec lists for {names}")
  for family in _chosen(c):
    process = build.build(family.kind, _model_section(c, family), spec, c.dtype,
                          **_extra(c, family))
    for prefix, specs in (("sample.runs", c.sample.runs), ("compute_specs", c.compute_specs)):
      experiment_helpers.check_specs(process, specs[family.name], f"{prefix}.{family.name}")
  TrainConfig.from_config(c.train)  # budget and validation keys, named on error


def method(family: Family, spec) -> str:
  """The figure's series a spec belongs to."""
  if family.kind == "raster":
    return "raster AR (1 pixel/step)"
  if spec.name == "confidence":
    noise = spec.get("noise", 0.0)
    return f"{family.label}, confidence decoding" + (f" (noise {noise:g})" if noise else "")
  if family.kind == "ardm":
    return f"ARDM, k {spec.get('order', 'random')} pixels/step"
  if family.kind == "upscale":
    return "upscale ARDM, k random pixels/step, 2 stages"
  if family.kind == "masked":
    resample = spec.get("resample", 0.0)
    return "masked diffusion, ancestral" + (f" + resampling {resample:g}" if resample else "")
  return f"{family.label} {SOLVERS.get(spec.name, spec.name)}"


def best_label(family: Family) -> str:
  return f"{family.label}, best solver at each NFE"


STYLES = {"raster AR (1 pixel/step)": dict(marker="*", ms=14, ls="none", c="k"),
          "ARDM, k contiguous pixels/step": dict(c="#d62728"),
          "ARDM, k random pixels/step": dict(c="#1f77b4"),
          "ARDM, confidence decoding": dict(c="#1f77b4", ls=":", marker="x"),
          "ARDM, confidence decoding (noise 4.5)": dict(c="#17becf", ls="-.", marker="x"),
          best_label(FAMILIES[2]): dict(c="#2ca02c", lw=2.5, ms=6),
          best_label(FAMILIES[3]): dict(c="#9467bd", lw=2.0, ms=5, ls="--"),
          "masked diffusion, ancestral": dict(c="#ff7f0e", lw=2.0, marker="s"),
          "masked diffusion, ancestral + resampling 0.1": dict(c="#ff7f0e", ls="--",
                                                              marker="s", mfc="none"),
          "masked diffusion, confidence decoding (noise 4.5)": dict(c="#8c564b", ls="-.",
                                                                    marker="x"),
          "upscale ARDM, k random pixels/step, 2 stages": dict(c="#e377c2", marker="D", ms=4),
          "raster AR": dict(c="k", marker="*", ms=10), "ARDM": dict(c="#1f77b4"),
          "diffusion (transformer)": dict(c="#2ca02c", lw=2.5),
          "diffusion (UNet)": dict(c="#9467bd", ls="--"),
          "masked diffusion": dict(c="#ff7f0e", lw=2.0),
          "upscale ARDM": dict(c="#e377c2", marker="D")}
METRICS = (("fd", "Fréchet distance (lower is better)", True),
           ("precision", "precision (k-NN, higher is better)", False),
           ("recall", "recall (k-NN, higher is better)", False))


def _chosen(c) -> tuple[Family, ...]:
  """The families of `c.families`, in the table's order."""
  return tuple(f for f in FAMILIES if f.name in c.families)


def _train_all(c, workdir, data, budget, processes):
  """{family name: [TrainedModel per training seed]}, all at the same FLOP budget."""
  out = {}
  for family in _chosen(c):
    out[family.name] = []
    for seed in c.training_seeds:
      lr = c.learning_rates.get(family.name, c.train.learning_rate)
      train_cfg = ml_collections.ConfigDict(dict(c.train.to_dict(), seed=int(seed),
                                                 flops=float(budget), learning_rate=float(lr)))
      name = f"{data.name}-{family.kind}-s{seed}"
      out[family.name].append(model_cache.fit_model(
          family.kind, c, workdir, data, _model_section(c, family), train_cfg, name=name,
          process=processes[family.name], **_extra(c, family)))
  return out


def _budget(c, data, processes) -> tuple[float, dict]:
  """The FLOP budget and each family's FLOPs per train step."""
  train_cfg = TrainConfig.from_config(c.train)
  per_step = {}
  for family in FAMILIES:
    if family.name not in processes:
      continue
    per_step[family.name] = train_step_flops(processes[family.name],
                                             model_cache.model_inputs(processes[family.name], data),
                                             data.y_train, train_cfg)
  if c.budget_tflop:
    return float(c.budget_tflop) * 1e12, per_step
  return c.budget_steps * per_step[c.budget_reference], per_step


def _test_bits(family: Family, model, data, key, num: int = 0) -> float:
  """Held-out bits per pixel on the first `num` test images (0: all), unconditional: each
  process's `nll_bound` (exact for raster AR, the ARDM and upscale bounds along one random order
  per image, the diffusion bound from 32 sampled timesteps per image)."""
  x = data.x_test[:num or None]
  inputs = model_cache.process_inputs(model.process, x, data)
  return held_out.test_bpd(model.process, model.params, inputs,
                           np.full((len(x),), data.num_classes, np.int32), key, batch_size=256,
                           **({"num_t_samples": 32} if family.gaussian else {}))


def _score(quality, images) -> dict:
  precision, recall = quality.precision_recall(images)
  return {"fd": quality.frechet(images), "precision": precision, "recall": recall}


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  n = c.num_samples
  quality = SampleQuality.for_experiment(c, workdir, data)
  null = np.full((n,), data.num_classes, np.int32)
  floors = {"fd": quality.floor(n)}
  floors["precision"], floors["recall"] = quality.floor_precision_recall(n)
  from ardiff import build

  processes = {f.name: build.build(f.kind, _model_section(c, f), data, c.dtype, **_extra(c, f))
               for f in FAMILIES if f.name in c.families or f.name == c.budget_reference}
  budget, per_step = _budget(c, data, processes)
  models = _train_all(c, workdir, data, budget, processes)

  def sample(model, params, text, key, labels):
    spec = parse_spec(text)
    return sample_cache.cached_samples(
        model.directory, params, f"{text}|batch={c.sample_batch}", key, labels,
        lambda: experiment_helpers.in_batches(
            lambda k, y: model.process.sample(params, k, y, spec), key, labels, c.sample_batch),
        enabled=c.cache_samples)

  rows, series, grids, training = [], {}, {}, []
  gains = _training_curves(c, workdir, models, per_step)
  for family in _chosen(c):
    trained = models[family.name]
    bits = [_test_bits(family, m, data, jax.random.key(11), c.test_bits_examples)
            for m in trained]
    stops = [m.info.get("stopped_early_at") for m in trained]
    training.append({
        "model": family.label, "kind": family.kind, "params": num_params(trained[0].params),
        "GFLOP/step": per_step[family.name] / 1e9,
        "budget PFLOP": budget / 1e15,
        "budget steps": trained[0].info["steps"],
        "lr": c.learning_rates.get(family.name, c.train.learning_rate),
        "stopped at": ", ".join("budget" if s is None else str(s) for s in stops),
        "best step": ", ".join(str(m.info.get("best_step")) for m in trained),
        "val loss": format_mean_std([m.info.get("best_val", np.nan) for m in trained]),
        "val gain, last quarter": format_mean_std(gains[family.name]),
        "test bits/pixel": format_mean_std(bits),
        "train minutes": format_mean_std([m.info["wall_seconds"] / 60 for m in trained])})
    for text in c.sample.runs[family.name]:
      spec = parse_spec(text)
      scores = []
      for i, model in enumerate(trained):
        images = sample(model, model.params, text, jax.random.key(1000 + i), null)
        scores.append(_score(quality, images))
        if i == 0:
          _keep_grid(grids, method(family, spec), model.process.nfe(spec), images)
      row = {"method": method(family, spec), "spec": text, "NFE": model.process.nfe(spec)}
      for metric, _, _ in METRICS:
        row[metric], row[f"{metric}_std"] = mean_std([s[metric] for s in scores])
      row["seeds"] = len(scores)
      rows.append(row)
      series.setdefault(row["method"], []).append(row)

  for family in (f for f in _chosen(c) if f.gaussian):  # each backbone's best solver per NFE
    own = [r for r in rows if r["method"].startswith(family.label + " ")]
    front = {x for x, _ in pareto_front([r["NFE"] for r in own], [r["fd"] for r in own])}
    best = {}
    for r in own:
      if r["NFE"] in front and (r["NFE"] not in best or r["fd"] < best[r["NFE"]]["fd"]):
        best[r["NFE"]] = r
    series[best_label(family)] = [best[x] for x in sorted(best)]
  shown = [name for name in series if not any(name.startswith(f.label + " ")
                                              for f in GAUSSIAN)]
  _panels(os.path.join(workdir, "quality_vs_nfe.png"),
          {name: series[name] for name in shown}, "NFE", floors,
          xlabel="network evaluations per image (NFE)",
          title=f"{data.name}: quality vs network evaluations at matched training compute "
                f"(mean ± std over {len(c.training_seeds)} training seeds)")
  plots.image_grid(np.concatenate([g for _, g in grids.values()]),
                   os.path.join(workdir, "grids_by_nfe.png"), nrow=10,
                   row_labels=[f"{name}, {nfe} NFE" for name, (nfe, _) in grids.items()],
                   vmax=data.num_levels - 1, title="Samples at the budget nearest 8 NFE "
                   "(training seed 0)", close=True)

  if c.reveal_nfe:
    _reveal(c, workdir, data, models)
  compute_rows = _quality_vs_compute(c, workdir, data, models, budget, per_step, quality,
                                     sample, floors)
  notes = (f"{data.description}; the last {c.train.val_examples} training images held out for "
           f"validation. Every model trained on {budget / 1e12:.3g} TFLOP "
           f"({budget / per_step[c.budget_reference]:.0f} steps of {c.budget_reference}, batch "
           f"{c.train.batch_size}), "
           f"early stopping on validation loss (patience {c.train.patience} x "
           f"{c.train.eval_every} steps), best EMA kept; {len(c.training_seeds)} training seeds "
           f"{list(c.training_seeds)}, each sampled once ({n} unconditional samples): columns "
           "are mean and std over training seeds. FD, precision and recall (k-NN, k=3) in the "
           f"digit classifier's features against the test split. Floors (train images vs test, "
           f"n={n}): FD {floors['fd']:.3g}, precision {floors['precision']:.3f}, recall "
           f"{floors['recall']:.3f}.")
  write_results(workdir, rows, "AR vs diffusion: quality against network evaluations at "
                "matched training compute", notes)
  write_results(workdir, training, "The models: budget, convergence, held-out bits",
               "Each model's own train step costed by XLA; budget steps = budget / that cost. "
               "'stopped at': the early-stopping step per training seed ('budget': the budget "
               "ran out first, i.e. still improving). 'val gain, last quarter': how much the "
               "validation loss fell over the last quarter of the steps, as a fraction of its "
               "value at three quarters (0 = converged). Test bits per pixel: each process's "
               "nll_bound, exact for raster AR, the ARDM and upscale bounds (one random order "
               "per image), the diffusion variational bound (32 timesteps per image); mean ± "
               "std over training seeds.", name="training")
  if compute_rows:
    write_results(workdir, compute_rows, "Quality against training compute",
                  "Each family's best compute spec at each budget (mean ± std over training "
                  "seeds); the model at a budget is the best-validation EMA within it.",
                  name="compute")
  return rows


def _keep_grid(grids, name, nfe, images):
  """One grid row per series: the budget nearest 8 NFE (on a log scale)."""
  best = grids.get(name)
  if best is None or abs(math.log(nfe / 8)) < abs(math.log(best[0] / 8)):
    grids[name] = (nfe, images[:10])


def _panels(path, series, x_key, floors, *, xlabel, title):
  """FD, precision and recall side by side, error bars = std over training seeds."""
  plots.line_panels(
      [plots.Panel([(name, [r[x_key] for r in rs], [r[metric] for r in rs],
                     [r[f"{metric}_std"] for r in rs]) for name, rs in series.items()],
                   ylabel, logy=logy, hlines=[("floor: train images vs test", floors[metric])])
       for metric, ylabel, logy in METRICS],
      path, xlabel=xlabel, title=title, logx=True, styles=STYLES, close=True)


def _training_curves(c, workdir, models, per_step) -> dict:
  """training_curves.png: each family's validation loss against training compute (one line per
  training seed, a dot at its best: the EMA kept); returns {family name: last-quarter gains
  per seed}."""
  panels, gains = [], {}
  for family in _chosen(c):
    curves = [validation_curve(m.directory) for m in models[family.name]]
    gains[family.name] = [last_quarter_gain(steps, losses) for steps, losses in curves]
    tflop = [steps * per_step[family.name] / 1e12 for steps, _ in curves]
    panels.append(plots.Panel(
        [(f"seed {seed}", x, losses) for seed, x, (_, losses) in
         zip(c.training_seeds, tflop, curves)], title=family.label,
        ylabel="validation loss (EMA; own units)" if not panels else "",
        marks=[(x[np.argmin(losses)], losses.min()) for x, (_, losses) in zip(tflop, curves)
               if len(losses)]))
  plots.line_panels(panels, os.path.join(workdir, "training_curves.png"),
                    xlabel="training compute (TFLOP)", panel_size=(3.4, 3.2), close=True,
                    styles={f"seed {s}": {"marker": "", "lw": 1.2} for s in c.training_seeds},
                    title="Validation loss against training compute (dot: the best, the EMA "
                          "kept)")
  return gains


def _reveal(c, workdir, data, models):
  """reveal.png: one unconditional sample (training seed 0's models, the same key) generated
  by each process in `reveal_nfe` network evaluations; raster AR needs one per pixel, so its
  row shows every (L / reveal_nfe)-th of its L steps."""
  from ardiff.report import reveal

  nfe, length = c.reveal_nfe, int(np.prod(data.shape))
  labels, key = np.full((1,), data.num_classes, np.int32), jax.random.key(3)
  rows = []

  def tokens(family_name, text, label):
    if family_name not in models:
      return
    model = models[family_name][0]
    history = model.process.sample_history(model.params, key, labels, text)[:, 0]
    if len(history) > nfe:  # raster: every (L / nfe)-th step
      history = history[np.linspace(0, len(history), nfe + 1).astype(int)[1:] - 1]
    rows.append((label, history))  # already frames: NaN where hidden

  tokens("raster", "raster", f"raster AR, {length} NFE\n(one frame per {length // nfe} steps)"
         if length > nfe else "raster AR")
  tokens("ardm", f"ardm:k={-(-length // nfe)}", "ARDM, random order")
  tokens("ardm", f"confidence:{nfe}:noise=4.5", "ARDM, confidence\ndecoding (MaskGIT)")
  tokens("masked", f"masked:{nfe}", "masked diffusion,\nancestral")
  tokens("upscale", f"upscale:k={-(-2 * length // nfe)}",
         "upscale ARDM\n(level // 4, then level)")
  for family in GAUSSIAN:
    if family.name not in models:
      continue
    model = models[family.name][0]
    history = model.process.sample_history(model.params, key, labels, f"ddim:{nfe}")[:, 0]
    rows.append((f"{family.label},\nDDIM (x_t)", history[..., 0]))
  reveal.reveal_figure(rows, os.path.join(workdir, "reveal.png"), vmax=data.num_levels - 1,
                       column_labels=[f"NFE {i + 1}" for i in range(nfe)],
                       title=f"{data.name}: one sample generated in {nfe} network evaluations "
                             "(training seed 0)")


def _quality_vs_compute(c, workdir, data, models, budget, per_step, quality, sample, floors):
  """Rows (family, budget, best compute spec, metrics mean/std) and quality_vs_compute.png."""
  fractions = sorted(c.train.snapshots) + [1.0]
  if len(fractions) < 2:
    return []
  rows = []
  for family in _chosen(c):
    trained = models[family.name]
    steps = trained[0].info["steps"]
    per_fraction = {}
    for i, model in enumerate(trained):
      snaps = snapshot_params(model.directory, model.params)
      stop = model.info.get("stopped_early_at")
      for f in fractions:
        step = max(1, round(f * steps))
        if f == 1.0 or stop is not None and stop <= step:
          params = model.params
        else:  # the snapshot saved nearest f of the steps (a run extended after its snapshots
          # were taken, e.g. when XLA's count of its step fell, has them at the old fractions)
          params = snaps[min(snaps, key=lambda s: abs(s - step))]
        for text in c.compute_specs[family.name]:
          images = sample(model, params, text, jax.random.key(2000 + i),
                          np.full((c.num_samples,), data.num_classes, np.int32))
          per_fraction.setdefault((f, text), []).append(_score(quality, images))
    for f in fractions:
      best = min(c.compute_specs[family.name],
                 key=lambda t: np.mean([s["fd"] for s in per_fraction[(f, t)]]))
      scores = per_fraction[(f, best)]
      row = {"model": family.label, "TFLOP": f * budget / 1e12, "spec": best}
      for metric, _, _ in METRICS:
        row[metric], row[f"{metric}_std"] = mean_std([s[metric] for s in scores])
      rows.append(row)
  series = {}
  for r in rows:
    series.setdefault(r["model"], []).append(r)
  _panels(os.path.join(workdir, "quality_vs_compute.png"), series, "TFLOP", floors,
          xlabel="training compute (TFLOP, XLA count)",
          title=f"{data.name}: each family's best sampler against training compute "
                f"(mean ± std over {len(c.training_seeds)} training seeds)")
  return rows
