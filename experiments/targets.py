"""What the diffusion network predicts: next_step vs x0 vs eps vs v, quality against NFE.

  ardiff run experiments/targets.py --workdir=runs/targets

One UNet per target, each with digits_diffusion.py's `unet`, `diffusion` and `train` sections
except `diffusion.target` (so the eps model is digits_diffusion's cached model). Every
prediction is converted to the implied noise and sampled with the same DDIM and DDPM loops at
a range of network evaluations (NFE); quality is the Fréchet distance on the digit classifier's
features. Training losses of different targets are in different units and are not compared;
instead, where in sampling each target errs is measured in one common unit: the RMS error of
the x0 and eps each network implies (exactly what the samplers see) on the test split, at a
range of timesteps t (sampling runs from t=T down to 1, so "early in sampling" is large t).
Writes targets.png, x0_error.png, grids.png, results.md/.csv, errors.md/.csv.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import build, experiment_helpers, model_cache
from ardiff.configs import require, require_choice, sized
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.processes.gaussian.targets import TARGETS, eps_to_x0
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results

SMOKE = ["train.steps=4", "train.log_every=2", "unet.base_channels=8",
         "unet.channel_mult=[1]", "diffusion.num_timesteps=10", "num_samples=40",
         "runs=['ddim:2']",
         "targets=['next_step', 'eps']", "error_ts=[1, 5, 10]", "classifier_steps=20"]

COLORS = {"eps": "#1f77b4", "x0": "#d62728", "v": "#2ca02c", "next_step": "#ff7f0e"}


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  # digits_diffusion.py's sections; diffusion.target is replaced by each entry of `targets`.
  c = image_config(scale, diffusion=True)
  c.targets = ["next_step", "x0", "v", "eps"]  # eps last: digits_diffusion may be training it
  c.num_samples = 300
  nfes = [2, 4, 8, 16, 64, 256]
  c.error_ts = [1, 3, 10, 30, 100, 250, 500, 750, 900, 970, 1000]
  if scale != "small":  # paper and mnist
    c.num_samples = 2000
    nfes = [2, 4, 8, 16, 32, 64, 256, 1000]
  # Every target is sampled with each spec; one curve per sampler name.
  c.runs = [f"{sampler}:{n}" for sampler in ("ddim", "ddpm") for n in nfes]
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  spec = validate_image_config(c)
  require(len(c.targets) >= 1, "targets", "needs at least one target")
  for t in c.targets:
    require_choice(t, "targets", TARGETS)
  require(len(set(c.targets)) == len(c.targets), "targets", f"has duplicates: {list(c.targets)}")
  require(len(c.runs) >= 1, "runs", "needs at least one sampling spec")
  experiment_helpers.check_specs(build.build("gaussian", c.unet, spec, c.dtype,
                                             diffusion=c.diffusion), c.runs, "runs")
  require(c.num_samples >= 2, "num_samples", "must be >= 2")
  require(all(1 <= t <= c.diffusion.num_timesteps for t in c.error_ts), "error_ts",
          f"each must be in 1..diffusion.num_timesteps={c.diffusion.num_timesteps}")


def implied_errors(process, params, x0: np.ndarray, ts, key) -> list[dict]:
  """RMS error of the x0 and eps the network implies (via the sampler's eps_fn, with its x0
  clipping) on clean images x0 noised to each t; the same noise for every process (paired)."""
  x0 = jnp.asarray(x0)
  n = x0.shape[0]
  null = jnp.full((n,), process.null_label, jnp.int32)
  out = []
  for t in ts:
    tt = jnp.full((n,), t, jnp.int32)
    eps = jax.random.normal(jax.random.fold_in(key, t), x0.shape)
    ab = process.schedule.alpha_bars[t]
    x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
    eps_hat = process.eps_fn(params, x_t, tt, null)
    x0_hat = eps_to_x0(process.schedule, eps_hat, x_t, tt)
    if process.clip_x0 is not None:  # undo float32 round-trip overshoot at alpha_bar ~ 1e-9
      x0_hat = jnp.clip(x0_hat, -process.clip_x0, process.clip_x0)
    out.append({"t": int(t), "x0_rmse": float(jnp.sqrt(jnp.mean((x0_hat - x0) ** 2))),
                "eps_rmse": float(jnp.sqrt(jnp.mean((eps_hat - eps) ** 2)))})
  return out


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  n, levels = c.num_samples, data.num_levels
  quality = SampleQuality.for_experiment(c, workdir, data)
  key = jax.random.key(c.seed)
  floor = quality.floor(n)
  rows = [{"target": "data (train split vs test: floor)", "sampler": "", "NFE": 0, "fd": floor}]
  series, styles, grids, error_rows, error_series = [], {}, [], [], []
  error_ts = sorted(c.error_ts)
  specs = [parse_spec(s) for s in c.runs]
  null = np.full((n,), data.num_classes, np.int32)
  x_test = levels_to_unit(data.x_test, levels)
  # What x0 prediction from pure noise can do at best: the mean image (see blurry_mean.py).
  mean_rmse = float(np.sqrt(np.mean((x_test - levels_to_unit(data.x_train, levels).mean(0)) ** 2)))
  for target in c.targets:
    cfg = ml_collections.ConfigDict(c.diffusion.to_dict())
    cfg.target = target
    process, params = model_cache.train_model("gaussian", c, workdir, data, c.unet, c.train,
                                              name=f"{data.name}-diffusion", diffusion=cfg)
    errors = implied_errors(process, params, x_test, error_ts, jax.random.fold_in(key, 1))
    error_rows += [{"target": target, **e} for e in errors]
    error_series.append((target, error_ts, [e["x0_rmse"] for e in errors]))
    curves = {}
    for spec in specs:
      nfe = process.nfe(spec)
      x = np.asarray(process.sample(params, key, null, spec))
      fd = quality.frechet(x)
      rows.append({"target": target, "sampler": spec.label, "NFE": nfe, "fd": fd})
      nfes, fds = curves.setdefault(spec.name, ([], []))
      nfes.append(nfe)
      fds.append(fd)
    ddim = [s for s in specs if s.name == "ddim"] or specs
    for spec in (ddim[0], ddim[-1]):
      grids.append((f"{target}, {spec.label}", np.asarray(
          process.sample(params, key, null[:12], spec))))
    for name, (nfes, fds) in curves.items():
      label = f"{target}, {name.upper()}"
      order = np.argsort(nfes)
      series.append((label, list(np.asarray(nfes)[order]), list(np.asarray(fds)[order])))
      styles[label] = dict(c=COLORS[target], ls="-" if name == "ddim" else "--")

  # The floor as a legend entry (an annotated hline would hide behind the legend).
  floor_label = "floor: train split vs test"
  styles[floor_label] = dict(c="gray", ls=":")
  all_nfes = [x for _, xs, _ in series for x in xs]
  plots.line_plot(series + [(floor_label, [min(all_nfes), max(all_nfes)], [floor, floor])],
                  os.path.join(workdir, "targets.png"),
                  xlabel="network evaluations per image (NFE)",
                  ylabel="Fréchet distance (classifier features), lower is better",
                  logx=True, logy=True, styles=styles,
                  title="Diffusion targets: quality vs NFE (solid DDIM, dashed DDPM)", close=True)
  plots.line_plot(error_series, os.path.join(workdir, "x0_error.png"),
                  xlabel="timestep t (sampling runs from t=T on the right down to t=1)",
                  ylabel="RMS error of the implied x0 on the test split", logx=True,
                  hlines=[("predicting the train-split mean image", mean_rmse)],
                  styles={t: dict(c=COLORS[t]) for t in c.targets},
                  title="Where each target errs: implied x0, unconditional", close=True)
  plots.image_grid(np.concatenate([g for _, g in grids]), os.path.join(workdir, "grids.png"),
                   nrow=12, row_labels=[name for name, _ in grids], vmax=levels - 1,
                   title="Samples at the fewest and the most DDIM steps", close=True)

  notes = (f"{data.description}. One UNet per target (base "
           f"{c.unet.base_channels}, mult {tuple(c.unet.channel_mult)}), {c.diffusion.schedule} "
           f"schedule, T={c.diffusion.num_timesteps}, {c.train.steps} steps of batch "
           f"{c.train.batch_size}: the same budget, only diffusion.target differs. Every "
           "prediction is converted to the implied eps (x0 clipped to [-1, 1], "
           f"clip_x0={c.diffusion.clip_x0}) and sampled by the same DDIM (eta=0) and DDPM loops "
           "over strided timesteps. next_step: the network regresses x_{t-1} (its optimum is "
           "the posterior mean), from which x0 is recovered with the one-step posterior "
           "coefficients. fd: Fréchet distance of "
           f"{n} unconditional samples (one sampling seed) to the test split on the digit "
           f"classifier's features; floor (train split vs test, same n): {floor:.3g}. Training "
           "losses are in each target's own units and not comparable, so they are not shown; "
           "errors.md / x0_error.png compare the targets in one unit per timestep instead.")
  write_results(workdir, rows, "Diffusion targets: quality against network evaluations", notes)
  write_results(workdir, error_rows, "Diffusion targets: error of the implied x0 and eps by t",
                f"The {len(x_test)} test images noised to x_t with the same noise for every "
                "target; the network's prediction converted to eps (x0 clipped to "
                f"[-{c.diffusion.clip_x0}, {c.diffusion.clip_x0}] as in sampling) and to x0; "
                "null label. RMS errors in the [-1, 1] pixel units (x0) and in noise units "
                "(eps). Sampling visits t from T down to 1: large t is early in sampling. "
                f"Reference: the train-split mean image has x0 RMS error {mean_rmse:.3g}.",
                name="errors")
  return rows
