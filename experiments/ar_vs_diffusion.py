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

import os

import jax
import ml_collections
import numpy as np

from ardiff.comparison import figures, labels, scoring, tables
from ardiff.comparison.budget import flop_budget, train_all
from ardiff.comparison.families import Family, build_process, chosen
from ardiff.comparison.validation import validate_comparison
from ardiff.configs import require, sized
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes.gaussian import samplers
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, reveal, write_results

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


FAMILIES = (Family("raster", "raster", "ar", (), "raster AR"),
            Family("ardm", "ardm", "ar", (), "ARDM"),
            Family("diffusion_transformer", "gaussian_transformer", "ar", ("diffusion",),
                   "diffusion (transformer)", (("patch_size", "dit_patch_size"),)),
            Family("diffusion_unet", "gaussian", "unet", ("diffusion",), "diffusion (UNet)"),
            Family("masked", "masked", "ar", ("masking",), "masked diffusion"),
            Family("upscale", "upscale", "ar", ("upscale",), "upscale ARDM"))


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
  the even budgets) at the largest budget below it that it can (`samplers.steps_within`)."""
  out = []
  for solver in labels.SOLVERS:
    steps = [samplers.steps_within(solver, n) for n in nfes]
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


def validate(c: ml_collections.ConfigDict) -> None:
  spec = validate_image_config(c)
  require(c.dit_patch_size >= 1, "dit_patch_size", f"must be >= 1, got {c.dit_patch_size}")
  require(all(d % c.dit_patch_size == 0 for d in spec.shape[:2]), "dit_patch_size",
          f"{c.dit_patch_size} must divide the image height and width "
          f"({spec.shape[0]}x{spec.shape[1]})")
  pixels = int(np.prod(spec.shape))
  require(isinstance(c.reveal_nfe, int) and (c.reveal_nfe == 0 or c.reveal_nfe % 2 == 0
                                             and pixels % c.reveal_nfe == 0), "reveal_nfe",
          f"must be 0 (no reveal figure) or an even divisor of the {pixels} pixels (every "
          f"process then takes exactly that many steps), got {c.reveal_nfe!r}")
  validate_comparison(c, FAMILIES, spec)


STYLES = {"raster AR (1 pixel/step)": dict(marker="*", ms=14, ls="none", c="k"),
          "ARDM, k contiguous pixels/step": dict(c="#d62728"),
          "ARDM, k random pixels/step": dict(c="#1f77b4"),
          "ARDM, confidence decoding": dict(c="#1f77b4", ls=":", marker="x"),
          "ARDM, confidence decoding (noise 4.5)": dict(c="#17becf", ls="-.", marker="x"),
          labels.best_label(FAMILIES[2]): dict(c="#2ca02c", lw=2.5, ms=6),
          labels.best_label(FAMILIES[3]): dict(c="#9467bd", lw=2.0, ms=5, ls="--"),
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


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data, n, families = config_dataset(c), c.num_samples, chosen(FAMILIES, c.families)
  quality = SampleQuality.for_experiment(c, workdir, data)
  floors, null = scoring.floors(quality, n), np.full((n,), data.num_classes, np.int32)
  # 1. Train every family from every seed on one FLOP budget (the reference is costed anyway).
  processes = {f.name: build_process(c, f, data) for f in FAMILIES
               if f.name in c.families or f.name == c.budget_reference}
  flops, per_step = flop_budget(c, data, processes)
  models = train_all(c, workdir, data, families, flops, processes)
  gains = figures.training_curves(c, workdir, families, models, per_step)
  training = [tables.training_row(
      c, f, models[f.name], per_step[f.name], flops, gains[f.name],
      [scoring.test_bits(f, m, data, jax.random.key(11), c.test_bits_examples)
       for m in models[f.name]]) for f in families]
  # 2. Sample every spec from every seed's model: quality against NFE, sample grids.
  sample = scoring.cached_sampler(c)
  rows, grids = tables.quality_vs_nfe(c, families, models, sample, quality, null)
  seeds = f"(mean ± std over {len(c.training_seeds)} training seeds)"
  figures.metric_panels(os.path.join(workdir, "quality_vs_nfe.png"),
                        tables.nfe_series(rows, families), "NFE", floors, STYLES,
                        xlabel="network evaluations per image (NFE)",
                        title=f"{data.name}: quality vs network evaluations at matched training "
                              f"compute {seeds}")
  plots.image_grid(np.concatenate([g for _, g in grids.values()]),
                   os.path.join(workdir, "grids_by_nfe.png"), nrow=10,
                   row_labels=[f"{name}, {nfe} NFE" for name, (nfe, _) in grids.items()],
                   vmax=data.num_levels - 1, title="Samples at the budget nearest 8 NFE "
                   "(training seed 0)", close=True)
  # 3. One sample generated step by step by each process; quality against training compute.
  if c.reveal_nfe:
    _reveal(c, workdir, data, models)
  compute_rows = tables.quality_vs_compute(c, families, models, flops, sample, quality, null)
  if compute_rows:
    figures.metric_panels(os.path.join(workdir, "quality_vs_compute.png"),
                          tables.by_key(compute_rows, "model"), "TFLOP",
                          floors, STYLES, xlabel="training compute (TFLOP, XLA count)",
                          title=f"{data.name}: each family's best sampler against training "
                                f"compute {seeds}")
  # 4. The tables.
  notes = (f"{data.description}; the last {c.train.val_examples} training images held out for "
           f"validation. Every model trained on {flops / 1e12:.3g} TFLOP "
           f"({flops / per_step[c.budget_reference]:.0f} steps of {c.budget_reference}, batch "
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
                tables.TRAINING_NOTE, name="training")
  if compute_rows:
    write_results(workdir, compute_rows, "Quality against training compute",
                  tables.COMPUTE_NOTE, name="compute")
  return rows


def _reveal(c, workdir, data, models):
  """reveal.png: one unconditional sample (training seed 0's models, the same key) generated
  by each process in `reveal_nfe` network evaluations; raster AR needs one per pixel, so its
  row shows every (L / reveal_nfe)-th of its L steps."""
  nfe, length = c.reveal_nfe, int(np.prod(data.shape))
  raster = (f"raster AR, {length} NFE\n(one frame per {length // nfe} steps)"
            if length > nfe else "raster AR")
  specs = [("raster", "raster", raster),
           ("ardm", f"ardm:k={-(-length // nfe)}", "ARDM, random order"),
           ("ardm", f"confidence:{nfe}:noise=4.5", "ARDM, confidence\ndecoding (MaskGIT)"),
           ("masked", f"masked:{nfe}", "masked diffusion,\nancestral"),
           ("upscale", f"upscale:k={-(-2 * length // nfe)}",
            "upscale ARDM\n(level // 4, then level)")]
  specs += [(f.name, f"ddim:{nfe}", f"{f.label},\nDDIM (x_t)") for f in FAMILIES if f.gaussian]
  labels_ = np.full((1,), data.num_classes, np.int32)
  rows = [(label, reveal.history_frames(models[name][0].process, models[name][0].params,
                                        jax.random.key(3), labels_, text, nfe))
          for name, text, label in specs if name in models]
  reveal.reveal_figure(rows, os.path.join(workdir, "reveal.png"), vmax=data.num_levels - 1,
                       column_labels=[f"NFE {i + 1}" for i in range(nfe)],
                       title=f"{data.name}: one sample generated in {nfe} network evaluations "
                             "(training seed 0)")
