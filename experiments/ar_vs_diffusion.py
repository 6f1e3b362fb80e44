"""The central comparison: sample quality against network evaluations, AR and diffusion on one
axis, at matched training compute, over training seeds, with FD, precision and recall.

  ardiff run experiments/ar_vs_diffusion.py --workdir=runs/ar_vs_diffusion
  ardiff run experiments/ar_vs_diffusion.py --workdir=runs/ar_vs_diffusion_quick --config.quick=True

Six models, five removal processes, one training protocol:
  - raster AR: causal transformer (`ar` section), one pixel per step with a KV cache (64 NFE);
  - ARDM: the same transformer bidirectional, k pixels per step at random positions
    (`ardm:k=K`) or in contiguous raster chunks (`ardm:k=K:order=contiguous`), or the pixels
    the model is most confident of first (`confidence:S`, MaskGIT; with noise=4.5, MaskGIT's
    annealed Gumbel noise on the confidences);
  - masked diffusion (`masking` section): the same bidirectional transformer trained on the
    continuous-time absorbing-state ELBO, sampled ancestrally (`masked:S`), with the
    re-sampling corrector (`masked:S:resample=0.1`, 2S - 1 NFE) and by confidence;
  - upscale ARDM (`upscale` section): coarse to fine, each pixel's level // 4 (5 bins) in
    random order first, then the level (`upscale:k=K`, 2 ceil(64 / K) NFE);
  - diffusion, transformer: the SAME width, depth and heads (`ar` section; pixels as tokens,
    time and class through adaptive layer norm, bidirectional attention), so raster AR, ARDM and
    this differ only in the removal process;
  - diffusion, UNet (`unet` section): the convolutional denoiser, a second diffusion row.
  Diffusion is sampled with DDPM, DDIM, Heun and DPM-Solver++ 2M at 4..128 NFE; the figure
  draws, per backbone, the best solver at each budget (picking the best of four by the same
  scores favours diffusion slightly: read it with the spread).

Protocol (what a sceptical reader asks for):
  - matched compute: every model gets the same training budget in FLOPs (`budget_tflop`, or
    else `budget_steps` steps of the `budget_reference` model), each model's steps counted by
    XLA's cost analysis of its own train
    step), not the same number of steps;
  - converged: the last `train.val_examples` training images are held out, the EMA
    parameters' validation loss is computed every `train.eval_every` steps, training stops
    after `train.patience` evaluations without improvement and the best EMA is kept (the
    table reports the stopping step, or that the budget ran out first);
  - seeds: every model is trained from each of `training_seeds` (its own init, batches and
    dropout) and sampled with its own key: rows are mean ± std over training seeds;
  - metrics: Fréchet distance, and k-NN precision and recall (k=3), in the digit classifier's
    feature space against the test split, each beside its floor (train images vs test, same n);
  - quality against compute: each model keeps its best EMA at 1/8, 1/4 and 1/2 of the budget
    (`train.snapshots`); `compute_specs` are sampled there and the family's best is drawn.
  - EMA with warm-up (`train.ema_warmup`, decay min(0.999, (1 + n) / (10 + n)) at update n;
    `ardiff.train.ema_decay_at`). Why it matters here: with the fixed 0.999 of the first runs
    the diffusion transformer looked untrainable (validation eps-MSE 0.68 vs the UNet's 0.32),
    but only its EMA was. Measured on the digits (width 32, depth 2, lr 1e-3, warmup 200, 1522
    steps, batch 64; 1024 fixed (t, noise) draws on the 200 held-out digits): the raw
    parameters reach 0.248 at step 200 and 0.239 at step 500 (the UNet's raw: 0.412 at step
    100 against the transformer's 0.346), while the fixed-decay EMA stalls at 0.70 from step
    800 on, 2.6 (worse than predicting eps = 0) at t <= 100 of 1000, although the
    initialisation's weight in it falls to 0.22: an average of adaLN-Zero parameters from
    far-apart points of the trajectory is not a good network. With warm-up the EMA tracks the
    raw parameters (0.249 at step 200, best 0.2385 at step 400, 0.261 at 1522). Samples (300,
    unconditional, DPM-Solver++ 2M at 16 NFE, lr 3e-4, step 1522): FD 721 and precision 0.01
    from the fixed-decay EMA, 244 and 0.43 from the warm-up EMA (floor 18.9): the first runs'
    FD that grew with compute came from this EMA.
  - learning rates (`learning_rates`, per family; the others use train.learning_rate = 1e-3):
    the diffusion transformer trains at 3e-3. Same setting as above, warm-up EMA, validation
    eps-MSE: lr 3e-4 best 0.240 (steps 600-1000), 1e-3 best 0.2385 (step 400, then creeping up
    to 0.261, mostly at t < 50: early stopping), 3e-3 0.2036 at step 1500 and still falling
    (lower at every t; its samples' FD 236 against 244 at 3e-4: one seed, not significant).
    Against the UNet (its own 400-step run, lr 1e-3, 1.45x the FLOPs per step): 0.201 at step
    400, where the fixed-decay EMA reads 0.736 (so that EMA handicaps both early; the UNet's
    keeps improving, the transformer's stalls). Per FLOP the UNet still learns faster here.
    The network uses t: with t fixed at 500 the loss at t = 1000 is 0.27 instead of 0.008.
    Caveat: only this family was swept (the UNet's step is ~5x slower on 2 CPU cores; the AR
    transformers train without a plateau at 1e-3), which favours it slightly.
Writes quality_vs_nfe.png, quality_vs_compute.png, grids_by_nfe.png, reveal.png (one sample
generated by each process in `reveal_nfe` steps), training_curves.png (validation loss against
compute), results.md/.csv (one row per sampler), training.md/.csv (one row per model: budget,
steps, stopping step, last-quarter validation gain, test bits). Samples are kept beside each
model (`ardiff.sample_cache`), so a rerun that adds a row (`--config.families`, a spec) draws
only what is new.
`--config.quick=True`: one training seed, a quarter of the budget, DDIM and DPM-Solver++ only
(measured with the first four families: 594 s on 2 CPU cores shared with short jobs, 3.8 min of it
training; masked diffusion and upscale ARDM add two more models of the same size).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import ml_collections
import numpy as np

from ardiff import runs, sample_cache
from ardiff.configs import require
from ardiff.data.levels import to_tokens
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import config_dataset, image_config, unet_section, validate_image_config
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results
from ardiff.report.tables import pareto_front
from ardiff.train import TrainConfig, read_metrics, snapshot_params, train_step_flops

SMOKE_OVERRIDES = ["budget_steps=6", "budget_tflop=0", "train.log_every=2", "train.eval_every=2",
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


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True, diffusion=True)
  if scale == "small":
    # 12 models (4 x 3 seeds) trained to convergence on 2 CPU cores: transformers of width 32
    # (a quarter of width 64's FLOPs); the UNet keeps its default size.
    c.ar.width = 32
  c.quick = False
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
  """Every solver at (about) each NFE; Heun spends 2N - 1 evaluations on N steps."""
  out = []
  for solver in SOLVERS:
    steps = [(n + 1) // 2 for n in nfes] if solver == "heun" else nfes
    out += [f"{solver}:{k}" for k in dict.fromkeys(steps)]
  return out


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
      runs.check_specs(process, specs[family.name], f"{prefix}.{family.name}")
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
      out[family.name].append(runs.fit_model(
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
                                             runs.model_inputs(processes[family.name], data),
                                             data.y_train, train_cfg)
  if c.budget_tflop:
    return float(c.budget_tflop) * 1e12, per_step
  return c.budget_steps * per_step[c.budget_reference], per_step


def _test_bits(family: Family, model, data, key, num: int = 0) -> float:
  """Held-out test bits per pixel on the first `num` test images (0: all): exact (raster), the
  ARDM bound along one random order per image, the diffusion bound (32 sampled timesteps per
  image, unbiased)."""
  from ardiff.processes.autoregressive.evaluate import ardm_test_bpd, raster_test_bpd
  from ardiff.processes.gaussian.likelihood import bpd

  x = data.x_test[:num or None]
  null = np.full((len(x),), data.num_classes, np.int32)
  if family.kind == "raster":
    return raster_test_bpd(model.process, model.params, to_tokens(x), null)
  if family.kind in ("ardm", "masked"):  # masked: its ELBO is the ARDM bound (tested)
    return ardm_test_bpd(model.process, model.params, to_tokens(x), null, key)
  if family.kind == "upscale":  # the bound along one random order per stage
    from ardiff.processes.autoregressive.upscale import held_out_bpd

    return held_out_bpd(model.process, model.params, to_tokens(x), null, key)
  return bpd(model.process, model.params, x, None, data.num_levels, key,
             num_t_samples=32)["total"]


def _score(quality, images) -> dict:
  precision, recall = quality.precision_recall(images)
  return {"fd": quality.frechet(images), "precision": precision, "recall": recall}


def _mean_std(values) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values))


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  if c.get("quick"):
    c = quick_config(c)
  validate(c)
  data = config_dataset(c)
  n = c.num_samples
  quality = SampleQuality.create(data, cache_dir=os.path.join(workdir, c.model_cache),
                                 steps=c.classifier_steps)
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
        lambda: runs.in_batches(lambda k, y: model.process.sample(params, k, y, spec), key,
                                labels, c.sample_batch), enabled=c.cache_samples)

  rows, series, grids, training = [], {}, {}, []
  gains = _training_curves(c, workdir, models, per_step)
  for family in _chosen(c):
    trained = models[family.name]
    bits = [_test_bits(family, m, data, jax.random.key(11), c.test_bits_examples)
            for m in trained]
    stops = [m.info.get("stopped_early_at") for m in trained]
    training.append({
        "model": family.label, "kind": family.kind, "params": _params(trained[0].params),
        "GFLOP/step": per_step[family.name] / 1e9,
        "budget PFLOP": budget / 1e15,
        "budget steps": trained[0].info["steps"],
        "lr": c.learning_rates.get(family.name, c.train.learning_rate),
        "stopped at": ", ".join("budget" if s is None else str(s) for s in stops),
        "best step": ", ".join(str(m.info.get("best_step")) for m in trained),
        "val loss": _fmt_ms(_mean_std([m.info.get("best_val", np.nan) for m in trained])),
        "val gain, last quarter": _fmt_ms(_mean_std(gains[family.name])),
        "test bits/pixel": _fmt_ms(_mean_std(bits)),
        "train minutes": _fmt_ms(_mean_std([m.info["wall_seconds"] / 60 for m in trained]))})
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
        row[metric], row[f"{metric}_std"] = _mean_std([s[metric] for s in scores])
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
  _write_table(workdir, "training", "The models: budget, convergence, held-out bits", training,
               "Each model's own train step costed by XLA; budget steps = budget / that cost. "
               "'stopped at': the early-stopping step per training seed ('budget': the budget "
               "ran out first, i.e. still improving). 'val gain, last quarter': how much the "
               "validation loss fell over the last quarter of the steps, as a fraction of its "
               "value at three quarters (0 = converged). Test bits per pixel: exact for raster AR, "
               "the ARDM bound (one random order per image), the diffusion variational bound "
               "(32 timesteps per image); mean ± std over training seeds.")
  if compute_rows:
    _write_table(workdir, "compute", "Quality against training compute", compute_rows,
                 "Each family's best compute spec at each budget (mean ± std over training "
                 "seeds); the model at a budget is the best-validation EMA within it.")
  return rows


def _params(params) -> int:
  from ardiff.train import num_params

  return num_params(params)


def _fmt_ms(ms) -> str:
  mean, std = ms
  return "nan" if not np.isfinite(mean) else f"{mean:.4g} ± {std:.2g}"


def _write_table(workdir, name, title, rows, notes):
  write_results(workdir, rows, title, notes, name=name)


def _keep_grid(grids, name, nfe, images):
  """One grid row per series: the budget nearest 8 NFE (on a log scale)."""
  best = grids.get(name)
  if best is None or abs(math.log(nfe / 8)) < abs(math.log(best[0] / 8)):
    grids[name] = (nfe, images[:10])


def _panels(path, series, x_key, floors, *, xlabel, title):
  """FD, precision and recall side by side, error bars = std over training seeds."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
  for ax, (metric, ylabel, logy) in zip(axes, METRICS):
    for name, rs in series.items():
      style = {"marker": "o", "ms": 4, **STYLES.get(name, {})}
      ys = np.array([r[metric] for r in rs])
      err = np.array([r[f"{metric}_std"] for r in rs])
      lower = np.minimum(err, ys * 0.999) if logy else err
      ax.errorbar([r[x_key] for r in rs], ys, yerr=np.stack([lower, err]), label=name,
                  capsize=3, elinewidth=1, **style)
    ax.axhline(floors[metric], ls="--", c="gray", lw=1)
    ax.annotate("floor: train images vs test", (0.01, floors[metric]),
                xycoords=("axes fraction", "data"), fontsize=8, color="gray", va="bottom")
    ax.set_xscale("log")
    if logy:
      ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  plots.save_figure(fig, path)
  plt.close(fig)


def _validation_curve(model) -> tuple[np.ndarray, np.ndarray]:
  """(steps, validation losses) from a model's metrics.jsonl."""
  rows = [r for r in read_metrics(model.directory) if "val/loss" in r]
  return (np.array([r["step"] for r in rows], float), np.array([r["val/loss"] for r in rows]))


def last_quarter_gain(steps: np.ndarray, losses: np.ndarray) -> float:
  """How much the validation loss fell in the last quarter of training, as a fraction of the
  loss at three quarters (0: flat, i.e. converged; > 0: still improving)."""
  if len(steps) < 2:
    return float("nan")
  at_three_quarters = np.interp(0.75 * steps[-1], steps, losses)
  return float((at_three_quarters - losses.min()) / abs(at_three_quarters))


def _training_curves(c, workdir, models, per_step) -> dict:
  """training_curves.png: each family's validation loss against training compute (one line per
  training seed); returns {family name: last-quarter gains per seed}."""
  import matplotlib.pyplot as plt

  chosen = _chosen(c)
  fig, axes = plt.subplots(1, len(chosen), figsize=(3.4 * len(chosen), 3.2), squeeze=False)
  gains = {}
  for ax, family in zip(axes[0], chosen):
    gains[family.name] = []
    for seed, model in zip(c.training_seeds, models[family.name]):
      steps, losses = _validation_curve(model)
      gains[family.name].append(last_quarter_gain(steps, losses))
      ax.plot(steps * per_step[family.name] / 1e12, losses, lw=1.2, label=f"seed {seed}")
      best = int(np.argmin(losses)) if len(losses) else None
      if best is not None:
        ax.plot(steps[best] * per_step[family.name] / 1e12, losses[best], "k.", ms=5)
    ax.set_title(family.label, fontsize=10)
    ax.set_xlabel("training compute (TFLOP)")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("validation loss (EMA; own units)")
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Validation loss against training compute (dot: the best, the EMA kept)")
  fig.tight_layout()
  plots.save_figure(fig, os.path.join(workdir, "training_curves.png"), bbox_inches="tight")
  plt.close(fig)
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
    _, trajectory = model.process.sample_unit(model.params, key, labels, f"ddim:{nfe}",
                                              return_trajectory=True)
    rows.append((f"{family.label},\nDDIM (x_t)",
                 reveal.unit_frames(np.asarray(trajectory)[:, 0], data.num_levels)))
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
        row[metric], row[f"{metric}_std"] = _mean_std([s[metric] for s in scores])
      rows.append(row)
  series = {}
  for r in rows:
    series.setdefault(r["model"], []).append(r)
  _panels(os.path.join(workdir, "quality_vs_compute.png"), series, "TFLOP", floors,
          xlabel="training compute (TFLOP, XLA count)",
          title=f"{data.name}: each family's best sampler against training compute "
                f"(mean ± std over {len(c.training_seeds)} training seeds)")
  return rows
