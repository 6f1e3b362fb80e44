"""2-D spiral: every diffusion solver, DDPM without its injected noise, vector fields, guidance.

  ardiff run experiments/spiral.py --workdir=runs/spiral [--config.train.steps=2000]
  ardiff run experiments/spiral.py --workdir=runs/mine --config.dataset=npz \
      --config.data.path=points.npz

The second form trains on your own 2-D points (an .npz with `x` [N, 2] float and optional
integer `y`, README "Your own data"; `data.path` alone means dataset=npz too); nothing else
needs changing: the process standardises the data per dimension,
so no clip or noise scale has to be tuned to its range.

One class-conditional MLP denoiser (labels dropped with probability p_uncond) serves every
figure: unconditional samples use the null label.
Writes samplers.png, same_nfe.png (every solver at about 10 network evaluations),
vector_field.png, guidance.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import build, experiment_helpers, model_cache
from ardiff.configs import require, require_choice, require_positive, sized
from ardiff.data.checks import check_batch
from ardiff.metrics.points import nearest_label, point_metrics
from ardiff.precision import COMPUTE_DTYPES
from ardiff.presets import (diffusion_section, points_dataset, require_null_label,
                            train_section, validate_diffusion, validate_train)
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import parse_spec
from ardiff.report import plots, write_results


# A few-second run used by tests/test_experiments.py so CI catches a broken experiment.
SMOKE = ["train.steps=20", "train.log_every=10", "sample.num_samples=128",
         "diffusion.num_timesteps=20", "sample.runs=['ddpm:20', 'ddim:5', 'ddpm:20:noise=0']",
         "sample.guidance_sampler=ddim:5", "sample.field_grid=5", "model.width=32",
         "sample.same_nfe=['ddim:3', 'dpmpp_2m:3', 'heun:2']"]


@sized(scales=("small", "paper"), smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.model_cache = ""
  c.dataset = "spiral"  # or npz: your own points from data.path
  c.dtype = "float32"  # compute dtype: bfloat16 runs matmuls in bf16, params stay float32
  # path: your own points (.npz with x [N, 2], optional y) instead of the spiral; then
  # num_classes / noise / num_train / num_test are ignored and 10% of the points are held out.
  c.data = dict(path="", num_classes=3, noise=0.03, num_train=20_000, num_test=4_000)
  c.model = dict(width=192, depth=4)
  c.diffusion = diffusion_section(p_uncond=0.3)
  c.train = train_section(steps=8_000, batch_size=512, learning_rate=2e-3, ema_decay=0.995,
                          log_every=500, checkpoint_every=2_000)
  c.sample = dict(num_samples=2_000,
                  runs=["ddpm:1000", "ddim:50", "ddim:10", "dpmpp_2m:10", "dpmpp_3m:10",
                        "heun:10", "heun:25", "euler_a:50", "ddpm:1000:noise=0"],
                  same_nfe=["ddpm:10", "ddim:10", "euler_a:10", "heun:5", "dpmpp_2m:10",
                            "dpmpp_3m:10"],
                  guidance_scales=[0.0, 1.0, 3.0, 7.0], guidance_sampler="ddim:50",
                  negative=[0, 1], field_times=[0.9, 0.5, 0.2, 0.05], field_grid=21)
  if scale == "paper":
    c.train.steps = 30_000
    c.model.width = 256
    c.sample.num_samples = 10_000
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  require_choice(c.size, "size", get_config.sizes)
  require_choice(c.dtype, "dtype", COMPUTE_DTYPES)
  require_positive(c.data, "data", "num_classes", "num_train", "num_test")
  require(c.data.noise >= 0, "data.noise", f"must be >= 0, got {c.data.noise}")
  require_choice(c.dataset, "dataset", ["spiral", "npz"])
  require(c.dataset != "npz" or bool(c.data.path), "data.path",
          "dataset=npz reads a file: add --config.data.path=FILE.npz")
  require_positive(c.model, "model", "width", "depth")
  validate_diffusion(c.diffusion)
  require_null_label(c.diffusion.p_uncond, "diffusion.p_uncond")
  validate_train(c.train, "train")
  require_positive(c.sample, "sample", "num_samples", "field_grid")
  data = _data(c, num_test=1)
  if c.data.path:
    check_batch(f"data file {c.data.path}", len(data.x_train), c.train.batch_size)
  else:
    require(c.data.num_train >= c.train.batch_size, "data.num_train",
            f"{c.data.num_train} training points are fewer than train.batch_size "
            f"{c.train.batch_size}")
  process = _process(c, data)
  experiment_helpers.check_specs(process, c.sample.runs, "sample.runs")
  experiment_helpers.check_specs(process, c.sample.same_nfe, "sample.same_nfe")
  experiment_helpers.check_specs(process, [c.sample.guidance_sampler], "sample.guidance_sampler",
                                 guidance=Guidance(1.0))
  num_classes = process.num_classes
  if num_classes >= 2:  # unlabelled data skips the guidance figure
    require(len(c.sample.negative) == 2 and all(0 <= a < num_classes for a in c.sample.negative),
            "sample.negative", f"must be two class ids in 0..{num_classes - 1}")
  require(all(0 < t <= 1 for t in c.sample.field_times), "sample.field_times",
          "times must lie in (0, 1]")


def _data(c, num_test=None):
  data = points_dataset(c, num_test)
  if c.data.path:  # a DataError names the file and field; this names what the file holds
    require(data.kind == "points" and data.shape == (2,), "data.path",
            f"{c.data.path} holds {data.kind} of shape {data.shape}; this experiment needs "
            "2-D points x [N, 2]")
  return data


def _process(c, data):
  return build.build("gaussian", c.model, data, c.dtype, diffusion=c.diffusion)


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = _data(c)
  # Keyed as before the model cache took builder versions, so trained spirals stay valid.
  process, params = model_cache.train_model("gaussian", c, workdir, data, c.model, c.train,
                                            key_sections=(c.data, c.model, c.diffusion)
                                            + ((data.name,) if c.data.path else ()),
                                            name="spiral-diffusion", diffusion=c.diffusion)

  key = jax.random.key(c.seed + 1)
  n, T = c.sample.num_samples, c.diffusion.num_timesteps
  test = data.x_test
  null = np.full((n,), process.null_label, np.int32)
  rows = [{"setting": "held-out data (reference)", "NFE": 0, "seconds": 0.0,
           **point_metrics(data.x_train[:n], test)}]
  panels = [("data", test[:n], None)]
  for spec in map(parse_spec, c.sample.runs):
    row = {"setting": spec.label, "NFE": process.nfe(spec)}
    process.sample(params, key, null, spec)  # compile outside the timed block
    with experiment_helpers.timed(row):
      x = np.asarray(experiment_helpers.block(process.sample(params, key, null, spec)))
    row.update(point_metrics(x, test))
    rows.append(row)
    panels.append((f"{spec.label}\nSW1 {row['sliced_w1']:.3f}  spread {row['spread']:.2f}", x, None))
  plots.scatter_panels(panels, os.path.join(workdir, "samplers.png"), data=test,
                       ncols=min(5, len(panels)), title="Spiral: samplers (grey: held-out data)",
                       close=True)

  # Every solver at (about) the same budget of network evaluations.
  same = []
  for spec in map(parse_spec, c.sample.same_nfe):
    x = np.asarray(process.sample(params, key, null, spec))
    metrics = point_metrics(x, test)
    rows.append({"setting": f"{spec.label} (same-NFE panel)", "NFE": process.nfe(spec),
                 **metrics})
    same.append((f"{spec.label}: {process.nfe(spec)} NFE\nSW1 {metrics['sliced_w1']:.3f}", x,
                 None))
  plots.scatter_panels(same, os.path.join(workdir, "same_nfe.png"), data=test, ncols=3,
                       title="Each solver at about 10 network evaluations (grey: held-out data)",
                       close=True)

  # The learned denoising direction x0_hat(x, t) - x on a grid, unconditional.
  lo, hi = np.percentile(test, [1, 99], axis=0)
  pad = 0.15 * (hi - lo)
  axes = [np.linspace(lo[d] - pad[d], hi[d] + pad[d], c.sample.field_grid, dtype=np.float32)
          for d in range(2)]
  grid = np.stack(np.meshgrid(*axes), -1).reshape(-1, 2)
  null = jnp.full((len(grid),), process.null_label, jnp.int32)
  field_panels = []
  for tf in c.sample.field_times:
    u = jnp.full((len(grid),), tf, jnp.float32)
    x_model = process.to_model(jnp.asarray(grid))
    eps = process.eps_fn(params, x_model, u, null)
    ab = process.schedule.alpha_bar_at(u)[:, None]
    x0 = process.to_data((x_model - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab))
    field_panels.append((f"t = {tf:g}  (step {int(round(tf * T))})", grid,
                         np.asarray(x0) - grid))
  plots.quiver_panels(field_panels, os.path.join(workdir, "vector_field.png"), data=test,
                      title="Learned denoising direction  x̂0(x, t) − x", close=True)

  if data.num_classes >= 2:
    _guidance_figure(c, process, params, key, data, rows, workdir)

  source = (f"Spiral, {c.data.num_classes} arms, noise {c.data.noise}" if not c.data.path
            else f"Points from {c.data.path} ({data.description})")
  notes = (f"{source}; {n} samples per row; "
           f"{c.train.steps} training steps. sliced_w1: sliced 1-Wasserstein to held-out data "
           "(256 directions); mmd: unbiased squared MMD, Gaussian kernel, bandwidth 0.1; "
           "nearest: mean distance to the nearest held-out point; spread: RMS distance to the "
           "centroid (collapse -> 0); class_accuracy: fraction whose nearest held-out point is "
           "on the requested arm. seconds: wall time of the sampling call (compiled).")
  write_results(workdir, rows, "Spiral: samplers and guidance", notes)
  return rows


def _guidance_figure(c, process, params, key, data, rows, workdir):
  """Classifier-free guidance and negative conditioning (labelled data only)."""
  n, test = c.sample.num_samples, data.x_test
  # Classifier-free guidance: equal numbers of each class, scale sweep, one negative panel.
  spec = parse_spec(c.sample.guidance_sampler)
  labels = np.arange(n) % data.num_classes
  g_panels = []
  for w in c.sample.guidance_scales:
    guidance = Guidance(w)
    x = np.asarray(process.sample(params, key, labels, spec, guidance=guidance))
    acc = float(np.mean(nearest_label(x, test, data.y_test) == labels))
    rows.append({"setting": f"guidance w={w:g} ({spec.label})",
                 "NFE": process.nfe(spec, guidance=guidance), **point_metrics(x, test),
                 "class_accuracy": acc})
    colors = plots.arm_colors(labels)
    g_panels.append((f"w = {w:g}\non requested arm {acc:.0%}", x, colors))
  # Negative conditioning: eps = eps(neg) + w (eps(pos) - eps(neg)), pos = arm A or null.
  pos, neg = c.sample.negative
  guidance = Guidance(3.0, negative=neg)
  for requested, name in ((pos, f"arm {pos}"), (process.null_label, "any arm")):
    x = np.asarray(process.sample(params, key, np.full((n,), requested, np.int32), spec,
                                  guidance=guidance))
    arms = nearest_label(x, test, data.y_test)
    row = {"setting": f"{name}, away from arm {neg}, w=3",
           "NFE": process.nfe(spec, guidance=guidance),
           **point_metrics(x, test), "on_negative_arm": float(np.mean(arms == neg))}
    if requested != process.null_label:
      row["class_accuracy"] = float(np.mean(arms == requested))
    rows.append(row)
    g_panels.append((f"{name}, negative arm {neg} (w=3)\non arm {neg}: {np.mean(arms == neg):.1%}",
                     x, plots.arm_colors(arms)))
  plots.scatter_panels(g_panels, os.path.join(workdir, "guidance.png"), data=test, ncols=3,
                       title="Classifier-free guidance (colour: requested arm; "
                             "negative panels: nearest arm)", close=True)

