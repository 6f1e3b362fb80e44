"""DDPM vs DDIM: does the stochastic sampler reach the same distribution as the deterministic one?

  ardiff run experiments/ddpm_vs_ddim.py --workdir=runs/ddpm_vs_ddim

The claim: DDPM (fresh noise every step) and DDIM (the probability-flow ODE) "yield the same
final distribution". On spiral.py's and digits_diffusion.py's trained models (from their model
caches), per NFE: the distance between a DDPM and a DDIM sample set against the floor of
sampling noise (two DDPM sets), each sampler's distance to held-out data, and a permutation
test of "one law" (`ardiff.metrics.same_law`). Why the two limits can differ, what each number
is, and the cuts for the 2-core CPU: docs/ddpm_vs_ddim.md.
Writes distance_vs_nfe.png (`ardiff.report.law_figure`), spiral_panels.png, digits_panels.png,
results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from ardiff import build, experiment_helpers, model_cache
from ardiff.configs import require, sized
from ardiff.configs.overrides import load_experiment
from ardiff.metrics.frechet import frechet_distance
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.points import mmd_rbf, nearest_distance, sliced_wasserstein, spread
from ardiff.metrics.same_law import SAMPLERS, compare
from ardiff.metrics.sample_quality import SampleQuality, pixel_entropy, sharpness
from ardiff.presets import (SCALES, config_dataset, image_config, points_dataset,
                            validate_image_config)
from ardiff.report import plots, write_results
from ardiff.report.law_figure import same_law_figure

SMOKE = ["spiral.train.steps=20", "spiral.train.log_every=10", "spiral.model.width=32",
         "spiral.diffusion.num_timesteps=20", "sample.spiral_nfe=[2, 8]",
         "sample.spiral_samples=64", "sample.seeds=2", "sample.permutations=5",
         "train.steps=4", "train.log_every=2", "unet.base_channels=8",
         "unet.channel_mult=[1]", "diffusion.num_timesteps=10",
         "sample.digits_nfe=[3]", "sample.digits_samples=24", "classifier_steps=20"]

ALPHA = 0.05  # the permutation test's level for the same_law verdict


def _spiral_sections(scale: str) -> ml_collections.ConfigDict:
  """spiral.py's model-defining sections (same values, so the same cache key)."""
  spiral = load_experiment(os.path.join(os.path.dirname(os.path.abspath(__file__)), "spiral.py"))
  s = spiral.get_config("small" if scale == "small" else "paper")
  return ml_collections.ConfigDict(dict(
      seed=s.seed, dtype=s.dtype, model_cache="../spiral/models", data=s.data, model=s.model,
      diffusion=s.diffusion, train=s.train))


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, diffusion=True)  # digits_diffusion.py's sections: its UNet
  c.spiral = _spiral_sections(scale)
  c.sample = dict(seeds=3, spiral_nfe=[4, 8, 16, 64, 256], spiral_samples=1000,
                  digits_nfe=[8, 32, 128], digits_samples=200, digits=True, permutations=100)
  if scale != "small":
    c.sample.spiral_samples = 4000
    c.sample.digits_samples = 1000
    c.sample.digits_nfe = [8, 32, 128, 256, 1000]
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  validate_image_config(c)
  s = c.spiral
  require(s.data.path == "", "spiral.data.path",
          "this experiment samples the spiral (run spiral.py on your own points)")
  require(isinstance(c.sample.permutations, int) and c.sample.permutations >= 1,
          "sample.permutations", f"must be an integer >= 1, got {c.sample.permutations!r}")
  require(isinstance(c.sample.seeds, int) and c.sample.seeds >= 2, "sample.seeds",
          f"must be an integer >= 2 (the floor pairs two seeds), got {c.sample.seeds!r}")
  for name, T in (("spiral", s.diffusion.num_timesteps), ("digits", c.diffusion.num_timesteps)):
    nfe = c.sample[f"{name}_nfe"]
    require(len(nfe) >= 1 and all(isinstance(n, int) and 1 <= n <= T for n in nfe),
            f"sample.{name}_nfe", f"must be step counts in 1..num_timesteps={T}, got {list(nfe)}")
    require(c.sample[f"{name}_samples"] >= 2, f"sample.{name}_samples", "must be >= 2")
  process = build.build("gaussian", s.model, _spiral_data(s, num_test=1), s.dtype,
                        diffusion=s.diffusion)
  for sampler in SAMPLERS:
    experiment_helpers.check_specs(process, [f"{sampler}:{n}" for n in c.sample.spiral_nfe],
                                   "sample.spiral_nfe")


def _spiral_data(s, num_test=None):
  return points_dataset(s, num_test)  # validate() keeps data.path empty: the spiral


def _mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std())


def _rows(dataset, metric, dists, to_data):
  """One table row per NFE: mean and std of each distance, the test, the verdict."""
  rows = []
  for nfe, d in dists.items():
    m, sd = _mean_std(d["ddpm_vs_ddim"])
    f, sf = _mean_std(d["floor"])
    row = {"dataset": dataset, "metric": metric, "NFE": nfe,
           "ddpm_vs_ddim": m, "ddpm_vs_ddim_std": sd, "floor": f, "floor_std": sf,
           "floor_ddim": _mean_std(d["floor_ddim"])[0], "ratio": m / f if f > 0 else float("nan"),
           "pooled": d["pooled"], "pooled_floor": d["pooled_floor"], "p_value": d["p_value"],
           "permutations": d["permutations"],
           "same_law": "differs" if d["p_value"] < ALPHA else "not distinguished"}
    for s in SAMPLERS:
      row[f"{s}_to_data"], row[f"{s}_to_data_std"] = _mean_std(to_data[nfe][s])
    row.update(d["stats"])
    rows.append(row)
  return rows


def run_spiral(c, workdir):
  s = c.spiral
  data = _spiral_data(s)
  process, params = model_cache.train_model("gaussian", s, workdir, data, s.model, s.train,
                                            key_sections=(s.data, s.model, s.diffusion),
                                            name="spiral-diffusion", diffusion=s.diffusion)
  n = c.sample.spiral_samples
  null = np.full((n,), process.null_label, np.int32)
  test = data.x_test

  def sample(spec, key):
    return np.asarray(process.sample(params, key, null, spec))

  def describe(x):
    return {"spread": spread(x), "nearest": float(nearest_distance(x, test).mean())}

  dists, first = compare(sample, lambda x: x, sliced_wasserstein, describe,
                         c.sample.spiral_nfe, c.sample.seeds, jax.random.key(c.seed + 11),
                         c.sample.permutations)
  to_data = {nfe: {smp: [sliced_wasserstein(x, test) for x in d["sets"][smp]]
                   for smp in SAMPLERS} for nfe, d in dists.items()}
  # Real points against the same test split, as many as a sample set: the to_data floor.
  real = [data.x_train[np.random.default_rng(i).choice(len(data.x_train), n, replace=False)]
          for i in range(c.sample.seeds)]
  data_floor = _mean_std([sliced_wasserstein(x, test) for x in real])
  rows = _rows("spiral", "sliced W1", dists, to_data)
  for row, (nfe, d) in zip(rows, dists.items()):
    sets = d["sets"]
    row["mmd_ddpm_vs_ddim"] = float(np.mean([mmd_rbf(a, b) for a, b in
                                             zip(sets["ddpm"], sets["ddim"])]))
    row["mmd_floor"] = float(np.mean([mmd_rbf(a, sets["ddpm"][(i + 1) % len(sets["ddpm"])])
                                      for i, a in enumerate(sets["ddpm"])]))
  panels = []
  for nfe in (min(c.sample.spiral_nfe), max(c.sample.spiral_nfe)):
    for smp in SAMPLERS:
      st = dists[nfe]["stats"]
      panels.append((f"{smp.upper()} {nfe} NFE\nSW1 to data {np.mean(to_data[nfe][smp]):.3f}"
                     f"  spread {st[f'{smp}_spread']:.2f}", first[nfe][smp], None))
  plots.scatter_panels(panels, os.path.join(workdir, "spiral_panels.png"), data=test, ncols=4,
                       title=f"Spiral: DDPM and DDIM from one model, fewest and most steps "
                             f"(grey: held-out data, spread {spread(test):.2f})", close=True)
  return rows, data_floor, {"spread": spread(test),
                            "nearest": float(np.mean([nearest_distance(x, test).mean()
                                                      for x in real]))}


def run_digits(c, workdir):
  data = config_dataset(c)
  levels = data.num_levels
  quality = SampleQuality.for_experiment(c, workdir, data)
  process, params = model_cache.train_model("gaussian", c, workdir, data, c.unet, c.train,
                                            name=f"{data.name}-diffusion", diffusion=c.diffusion)
  n = c.sample.digits_samples
  null = np.full((n,), data.num_classes, np.int32)

  def sample(spec, key):
    return np.asarray(process.sample(params, key, null, spec))

  def describe(x):
    return {"sharpness": sharpness(levels_to_unit(x, levels)),
            "pixel_entropy": pixel_entropy(x, levels)}

  dists, first = compare(sample, quality.features, frechet_distance, describe,
                         c.sample.digits_nfe, c.sample.seeds, jax.random.key(c.seed + 12),
                         c.sample.permutations)
  test = quality.test_features
  to_data = {nfe: {smp: [frechet_distance(f, test) for f in d["sets"][smp]] for smp in SAMPLERS}
             for nfe, d in dists.items()}
  data_floor = _mean_std([quality.floor(n, seed=i) for i in range(c.sample.seeds)])
  rows = _rows("digits", "FD (classifier features)", dists, to_data)
  grid, names = [], []
  for nfe in c.sample.digits_nfe:
    for smp in SAMPLERS:
      grid.append(first[nfe][smp][:16])
      names.append(f"{smp.upper()} {nfe}")
  plots.image_grid(np.concatenate(grid), os.path.join(workdir, "digits_panels.png"), nrow=16,
                   row_labels=names, vmax=levels - 1, close=True,
                   title="Digits, one UNet: DDPM and DDIM (seed 0, first 16)\n"
                         "same start noise at every NFE; DDIM keeps its digits")
  test_levels = data.x_test
  return rows, data_floor, {"sharpness": sharpness(levels_to_unit(test_levels, levels)),
                            "pixel_entropy": pixel_entropy(test_levels, levels)}


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  rows, panels, floors, refs = [], [], {}, {}
  spiral_rows, floors["spiral"], refs["spiral"] = run_spiral(c, workdir)
  rows += spiral_rows
  panels.append((f"Spiral ({c.sample.spiral_samples} points per set)",
                 "sliced 1-Wasserstein distance", spiral_rows, floors["spiral"][0], "%.2g"))
  if c.sample.digits:
    digit_rows, floors["digits"], refs["digits"] = run_digits(c, workdir)
    rows += digit_rows
    panels.append((f"Digits 8x8 ({c.sample.digits_samples} images per set)",
                   "Fréchet distance (classifier features)", digit_rows, floors["digits"][0],
                   "%.0f"))
  same_law_figure(panels, os.path.join(workdir, "distance_vs_nfe.png"))
  for name, (m, sd) in floors.items():
    rows.append({"dataset": name, "metric": "data vs data", "NFE": 0, "floor": m,
                 "floor_std": sd, **{f"data_{k}": v for k, v in refs[name].items()}})
  notes = (f"One trained model per dataset (spiral: spiral.py's MLP, {c.spiral.train.steps} "
           f"steps; digits: digits_diffusion.py's UNet, {c.train.steps} steps), unconditional "
           f"samples; {c.sample.spiral_samples} spiral points / {c.sample.digits_samples} digit "
           f"images per set; mean and std over {c.sample.seeds} sampling seeds. ddpm_vs_ddim: "
           "distance between a DDPM set and a DDIM set (independent noise); floor: between two "
           "DDPM sets of different seeds (floor_ddim: two DDIM sets); ratio = ddpm_vs_ddim / "
           "floor. pooled: the distance between all seeds' DDPM and all seeds' DDIM samples "
           f"pooled; pooled_floor: its mean over {c.sample.permutations} random relabellings of "
           "the pooled samples; p_value: the share of relabellings at least as far apart "
           f"(permutation test of 'one law'); same_law: 'differs' if p < {ALPHA}, else 'not "
           "distinguished' (at this sample size, by this distance). *_to_data: each sampler's "
           "set against held-out data (spiral: the test points; digits: the 297 test images); "
           "the 'data vs data' rows give the same distance for a set of as many real train "
           "points / images (its floor) and the held-out data's own statistics. spread: RMS "
           "distance to the centroid; nearest: mean distance to the nearest held-out point; "
           "sharpness: mean absolute Laplacian; pixel_entropy: entropy (bits) of the grey-level "
           "histogram. mmd_*: squared MMD, Gaussian kernel, bandwidth 0.1, mean over seeds.")
  write_results(workdir, rows, "DDPM vs DDIM: same final distribution?", notes)
  return rows
