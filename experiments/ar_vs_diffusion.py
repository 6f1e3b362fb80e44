"""The central comparison: sample quality against network evaluations, AR and diffusion on
one axis.

  ardiff run experiments/ar_vs_diffusion.py --workdir=runs/ar_vs_diffusion

Models (reused from digits_ar.py / digits_diffusion.py when their configs match), each sampled
with every spec in `sample.runs.<model>` (the NFE of each is counted by its process):
  - raster AR, one pixel per step (causal transformer, KV cache): `raster`, 64 NFE;
  - ARDM (bidirectional transformer), k pixels per step in contiguous raster chunks
    (`ardm:k=K:order=contiguous`), and the SAME network with k pixels at random positions
    (`ardm:k=K`), k = 1..64, plus step budgets chosen by dynamic programming (`ardm:dp=S`);
  - diffusion (UNet) with every solver: DDPM, DDIM, Euler ancestral, Heun, DPM-Solver++ 2M
    and 3M (`ddpm:N`, `heun:N`, ...) at NFE = 2..256 (1000 at paper scale; Heun's N steps cost
    2N - 1). The figure draws each solver faintly and, in bold, the best diffusion solver at
    each budget (the Pareto front: no other solver is better with as few evaluations). Picking
    the best of six by the same FD favours diffusion slightly (selection among noisy
    estimates): read it with the fd_std column.
Quality: Fréchet distance on the digit classifier's features (floor: train split), mean and
spread over sampling seeds. Writes quality_vs_nfe.png, grids_by_nfe.png, results.md/.csv.
"""

from __future__ import annotations

import math
import os

import jax
import ml_collections
import numpy as np

from ardiff import runs
from ardiff.configs import require
from ardiff.configs.sections import image_config, validate_image_config
from ardiff.data import data_spec, load_dataset
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.processes.autoregressive.budget import resolve_dp
from ardiff.processes.autoregressive.evaluate import budget_losses
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results
from ardiff.report.tables import pareto_front
from ardiff.train import num_params

SMOKE_OVERRIDES = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
                   "unet.base_channels=8", "diffusion.num_timesteps=8", "num_samples=70",
                   "sample.runs.ardm=['ardm:k=64', 'ardm:k=64:order=contiguous', 'ardm:dp=1']",
                   "sample.runs.gaussian=['ddim:2', 'dpmpp_2m:3']",
                   "seeds=[0]",
                   "classifier_steps=20"]

# The model each spec list samples, with the kind `ardiff.build` makes and its config section.
MODELS = (("raster", "ar"), ("ardm", "ar"), ("gaussian", "unet"))


def _ardm_runs(ks, dp_steps):
  return ([f"ardm:k={k}:order=contiguous" for k in ks] + [f"ardm:k={k}" for k in ks]
          + [f"ardm:dp={s}" for s in dp_steps])


def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  # The same sections as digits_ar.py and digits_diffusion.py, so their models are reused.
  c = image_config(scale, ar=True, diffusion=True)
  c.num_samples = 300
  c.seeds = [0, 1, 2]
  ks = [1, 2, 4, 8, 16, 32, 64]
  # 1000 NFE x 3 seeds costs ~10 CPU minutes at this size: it is in the paper scale (and
  # digits_diffusion.py reports DDPM 1000 once).
  nfes = [2, 4, 8, 16, 32, 64, 128, 256] + ([1000] if scale != "small" else [])
  if scale != "small":  # paper and mnist
    c.num_samples = 2000
  c.sample_batch = 0  # samples per network call; 0: all num_samples at once
  c.budget_examples = 512  # train images the step-budget DP is fitted on (L calls each)
  if scale == "mnist":  # each k divides the 784 pixels: NFE 784, 392, ..., 4, 2
    ks = [1, 2, 4, 7, 14, 28, 49, 98, 196, 392]
    c.sample_batch = 250  # 2000 x [8 heads, 785, 785] attention maps at once: ~40 GB
  L = 784 if scale == "mnist" else 64
  c.sample = ml_collections.ConfigDict({"runs": {
      "raster": ["raster"],
      "ardm": _ardm_runs(ks, [L // k for k in ks]),
      "gaussian": _diffusion_runs(nfes)}})
  return c


# Diffusion solvers in the figure, with their series names.
SOLVER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "euler_a": "Euler ancestral", "heun": "Heun",
                "dpmpp_2m": "DPM-Solver++ 2M", "dpmpp_3m": "DPM-Solver++ 3M"}
BEST_DIFFUSION = "diffusion, best solver at each NFE"


def _diffusion_runs(nfes):
  """Every solver at (about) each NFE; Heun spends 2N - 1 evaluations on N steps."""
  out = []
  for solver in SOLVER_NAMES:
    steps = [(n + 1) // 2 for n in nfes] if solver == "heun" else nfes
    out += [f"{solver}:{k}" for k in dict.fromkeys(steps)]
  return out


def _processes(c, data):
  from ardiff import build

  return {kind: build.build(kind, c[section], data, c.dtype,
                            **({"diffusion": c.diffusion} if kind == "gaussian" else {}))
          for kind, section in MODELS}


def validate(c: ml_collections.ConfigDict) -> None:
  validate_image_config(c)
  require(len(c.seeds) >= 1, "seeds", "needs at least one sampling seed")
  require(c.num_samples >= 2, "num_samples", "must be >= 2")
  require(c.budget_examples >= 1, "budget_examples", f"must be >= 1, got {c.budget_examples}")
  require(c.sample_batch >= 0, "sample_batch", f"must be >= 0 (0: all at once), got "
          f"{c.sample_batch}")
  require(set(c.sample.runs) == {kind for kind, _ in MODELS}, "sample.runs",
          f"needs spec lists for {[kind for kind, _ in MODELS]}")
  processes = _processes(c, data_spec(c.dataset))
  for kind, process in processes.items():
    runs.check_specs(process, c.sample.runs[kind], f"sample.runs.{kind}")


def method(kind: str, spec) -> str:
  """The figure's series a spec belongs to."""
  if kind == "raster":
    return "raster AR (1 pixel/step)"
  if kind == "ardm":
    if spec.get("dp") is not None:
      return "ARDM, random, DP budget"
    return f"ARDM, k {spec.get('order', 'random')} pixels/step"
  return f"diffusion {SOLVER_NAMES.get(spec.name, spec.name)}"


_FAINT = dict(lw=1, ms=3, alpha=0.35)
STYLES = {"raster AR (1 pixel/step)": dict(marker="*", ms=14, ls="none", c="k"),
          "ARDM, k contiguous pixels/step": dict(c="#d62728"),
          "ARDM, k random pixels/step": dict(c="#1f77b4"),
          "ARDM, random, DP budget": dict(c="#1f77b4", ls="--"),
          BEST_DIFFUSION: dict(c="#2ca02c", lw=2.5, ms=6),
          "diffusion DDPM": dict(c="#2ca02c", **_FAINT),
          "diffusion DDIM": dict(c="#9467bd", **_FAINT),
          "diffusion Euler ancestral": dict(c="#8c564b", **_FAINT),
          "diffusion Heun": dict(c="#e377c2", **_FAINT),
          "diffusion DPM-Solver++ 2M": dict(c="#17becf", **_FAINT),
          "diffusion DPM-Solver++ 3M": dict(c="#bcbd22", **_FAINT)}


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = load_dataset(c.dataset)
  L, n = data.num_tokens, c.num_samples
  quality = SampleQuality.create(data, cache_dir=os.path.join(workdir, c.model_cache),
                                 steps=c.classifier_steps)
  null = np.full((n,), data.num_classes, np.int32)
  keys = [jax.random.key(s) for s in c.seeds]
  floor = quality.floor(n)
  rows, series, grids = [], {}, {}

  for kind, section in MODELS:
    extra = {"diffusion": c.diffusion} if kind == "gaussian" else {}
    name = f"{data.name}-diffusion" if kind == "gaussian" else None
    process, params = runs.train_model(kind, c, workdir, data, c[section], c.train, name=name,
                                       **extra)
    specs = [parse_spec(s) for s in c.sample.runs[kind]]
    if any(s.get("dp") is not None for s in specs):
      fit, _ = budget_losses(process, params, data, jax.random.key(7),
                             num_fit=c.budget_examples, num_eval=0)
      specs = [resolve_dp(s, fit) for s in specs]
    for spec in specs:
      nfe = process.nfe(spec)
      images = [runs.in_batches(lambda key, y: process.sample(params, key, y, spec), key, null,
                                c.sample_batch) for key in keys]
      fds = [quality.frechet(x) for x in images]
      series_name = method(kind, spec)
      rows.append({"method": series_name, "spec": _short(spec), "NFE": nfe,
                   "fd": float(np.mean(fds)), "fd_std": float(np.std(fds)), "seeds": len(fds),
                   "params": num_params(params)})
      xs, ys = series.setdefault(series_name, ([], []))
      xs.append(nfe)
      ys.append(rows[-1]["fd"])
      # One grid row per series: the budget nearest 8 NFE (on a log scale).
      best = grids.get(series_name)
      if best is None or abs(math.log(nfe / 8)) < abs(math.log(best[0] / 8)):
        grids[series_name] = (nfe, images[0][:10])

  diffusion = [(x, y) for name, (xs, ys) in series.items() if name.startswith("diffusion ")
               for x, y in zip(xs, ys)]
  if diffusion:
    front = pareto_front(*zip(*diffusion))
    series[BEST_DIFFUSION] = ([x for x, _ in front], [y for _, y in front])
  plots.line_plot([(name, xs, ys) for name, (xs, ys) in series.items()],
                  os.path.join(workdir, "quality_vs_nfe.png"),
                  xlabel="network evaluations per image (NFE)",
                  ylabel="Fréchet distance (classifier features), lower is better",
                  logx=True, logy=True, hlines=[("floor: train split vs test", floor)],
                  styles=STYLES, title=f"{data.name}: quality vs network evaluations", close=True)
  plots.image_grid(np.concatenate([g for _, g in grids.values()]),
                   os.path.join(workdir, "grids_by_nfe.png"), nrow=10,
                   row_labels=[f"{name}, {nfe} NFE" for name, (nfe, _) in grids.items()],
                   vmax=data.num_levels - 1, title="Samples at the budget nearest 8 NFE",
                   close=True)
  notes = (f"{data.description}, {n} unconditional samples per point, "
           f"{len(c.seeds)} sampling seeds (fd = mean, fd_std = spread); one training seed. "
           f"Floor (train split vs test, n={n}): {floor:.3g}. Budgets matched: every network "
           f"trains {c.train.steps} steps of batch {c.train.batch_size} on the same split; "
           "parameter counts in the params column. The contiguous and random ARDM rows use the "
           "same network and differ only in which pixels each step reveals.")
  write_results(workdir, rows, "AR vs diffusion: quality against network evaluations", notes)
  return rows


def _short(spec) -> str:
  """The spec as written in the config (a DP spec without its resolved sizes)."""
  return str(spec) if spec.get("dp") is None else f"ardm:dp={spec.get('dp')}"
