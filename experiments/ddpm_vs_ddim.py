"""DDPM vs DDIM: does the stochastic sampler reach the same distribution as the deterministic one?

  ardiff run experiments/ddpm_vs_ddim.py --workdir=runs/ddpm_vs_ddim

The claim: DDPM (ancestral sampling, fresh noise every step) and DDIM (eta = 0: Euler steps on
the probability-flow ODE, no noise after the start) "yield the same final distribution". For
the exact score both converge to the data law as the steps shrink, DDPM in law (an SDE
discretisation) and DDIM path by path (an ODE); with a learned network they converge to the
laws of the network's reverse SDE and probability-flow ODE, which are equal only if the
network's score is the exact score of its own forward marginals. So with a trained model the
two limits can differ, and at few steps they differ by their (different) discretisation
errors.

Measured on one trained model per dataset, for each NFE in a grid, from independent noise:
  d(DDPM, DDIM)   distance between a DDPM set and a DDIM set of n samples each;
  floor           d(DDPM seed i, DDPM seed i+1): the distance between two independent DDPM
                  sets of the same size, i.e. what sampling noise alone gives at n (also
                  for DDIM: floor_ddim);
  to_data         each sampler's distance to held-out data.
Distances: the spiral uses the sliced 1-Wasserstein distance (`metrics.points`, 256
directions) and the squared MMD (Gaussian kernel, bandwidth 0.1); digits use the Fréchet
distance between the two sets' features in the digit classifier (`SampleQuality.features`).
Every number is mean ± std over `sample.seeds` sampling seeds (one training seed); seed i
draws DDPM and DDIM from different keys, and the floor pairs seed i's DDPM set with seed
i+1's (cyclically), so the floor and d(DDPM, DDIM) compare sets of the same size.

Verdict per NFE (the `same_law` column): a permutation test of "DDPM and DDIM draw from one
law" with the same distance as statistic, on all seeds' samples pooled (seeds x n per
sampler): "differs" when p < 0.05, else "not distinguished". Not distinguished says the laws
agree as far as this distance sees at this sample size; it does not prove them equal. The
describing statistics (spread and nearest-data distance for points, sharpness and grey-level
entropy for digits) say in which direction the samplers differ.

Models: the spiral's is spiral.py's (its data, model, diffusion and train sections, loaded from
that file, and its model cache `../spiral/models`, so `runs/spiral`'s trained model is reused;
trained here if absent); digits' is digits_diffusion.py's UNet (the shared `../models`).
Cut for the 2-core CPU: 1000 spiral samples per set (spiral.py draws 2000), 200 digit samples
per set, digits at NFE 8 / 32 / 128 (no 256 or 1000: DDPM-1000 on 500 digits is ~8 minutes
here), 3 seeds. Digits at 256 NFE alone (about 5 minutes here, models cached):
  ardiff run experiments/ddpm_vs_ddim.py --workdir=runs/ddpm_vs_ddim/nfe256 \
    --config.model_cache=../../models --config.spiral.model_cache=../../spiral/models \
    '--config.sample.spiral_nfe=[4]' '--config.sample.digits_nfe=[256]'
Writes distance_vs_nfe.png, spiral_panels.png, digits_panels.png, results.md/.csv.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from ardiff import build, runs
from ardiff.configs import require, require_choice, sized
from ardiff.configs.overrides import load_experiment
from ardiff.data.spiral import spiral_dataset
from ardiff.metrics.frechet import frechet_distance
from ardiff.data.levels import levels_to_unit
from ardiff.metrics.points import mmd_rbf, nearest_distance, sliced_wasserstein, spread
from ardiff.metrics.sample_quality import SampleQuality, pixel_entropy, sharpness
from ardiff.presets import SCALES, config_dataset, image_config, validate_image_config
from ardiff.report import plots, write_results

SMOKE = ["spiral.train.steps=20", "spiral.train.log_every=10", "spiral.model.width=32",
         "spiral.diffusion.num_timesteps=20", "sample.spiral_nfe=[2, 8]",
         "sample.spiral_samples=64", "sample.seeds=2", "sample.permutations=5",
         "train.steps=4", "train.log_every=2", "unet.base_channels=8",
         "unet.channel_mult=[1]", "diffusion.num_timesteps=10",
         "sample.digits_nfe=[3]", "sample.digits_samples=24", "classifier_steps=20"]

SAMPLERS = ("ddpm", "ddim")
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
    runs.check_specs(process, [f"{sampler}:{n}" for n in c.sample.spiral_nfe], "sample.spiral_nfe")


def _spiral_data(s, num_test=None):
  d = s.data
  return spiral_dataset(d.num_train, num_test or d.num_test, d.num_classes, d.noise, seed=s.seed)


def _mean_std(values) -> tuple[float, float]:
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std())


def permutation_test(a: np.ndarray, b: np.ndarray, distance, num: int, seed: int = 0):
  """Two-sample permutation test with statistic distance(a, b).

  Under H0 (a and b drawn from one law) every split of the pooled rows into groups of len(a)
  and len(b) is equally likely, so p = (1 + #{perm: d_perm >= d_obs}) / (1 + num) is a valid
  p-value (resolution 1 / (1 + num)). Returns (d_obs, mean of d_perm, p)."""
  pooled = np.concatenate([a, b])
  rng = np.random.default_rng(seed)
  observed = distance(a, b)
  null = []
  for _ in range(num):
    idx = rng.permutation(len(pooled))
    null.append(distance(pooled[idx[:len(a)]], pooled[idx[len(a):]]))
  null = np.asarray(null)
  return observed, float(null.mean()), float((1 + np.sum(null >= observed)) / (1 + num))


def compare(sample, embed, distance, describe, nfes, seeds, key, permutations):
  """DDPM and DDIM sets per NFE and seed, the distances between them, and a test of H0.

  sample(spec, key) -> samples; embed(samples) -> rows the distance reads (features for
  images); distance(a, b) -> float; describe(samples) -> {stat: value}. Seed i uses
  fold_in(key, 2i) for DDPM, fold_in(key, 2i + 1) for DDIM; the floors pair seed i with seed
  (i + 1) mod seeds; the permutation test pools the seeds (seeds x n rows per sampler).
  Returns ({nfe: results}, {nfe: {sampler: seed 0's samples}})."""
  out, first = {}, {}
  for nfe in nfes:
    raw = {s: [sample(f"{s}:{nfe}", jax.random.fold_in(key, 2 * i + j)) for i in range(seeds)]
           for j, s in enumerate(SAMPLERS)}
    xs = {s: [embed(x) for x in raw[s]] for s in SAMPLERS}
    nxt = [(i + 1) % seeds for i in range(seeds)]
    pooled, pooled_floor, p = permutation_test(np.concatenate(xs["ddpm"]),
                                               np.concatenate(xs["ddim"]), distance,
                                               permutations, seed=nfe)
    out[nfe] = {"ddpm_vs_ddim": [distance(xs["ddpm"][i], xs["ddim"][i]) for i in range(seeds)],
                "floor": [distance(xs["ddpm"][i], xs["ddpm"][j]) for i, j in enumerate(nxt)],
                "floor_ddim": [distance(xs["ddim"][i], xs["ddim"][j]) for i, j in enumerate(nxt)],
                "sets": xs, "pooled": pooled, "pooled_floor": pooled_floor, "p_value": p,
                "permutations": permutations,
                "stats": {f"{s}_{k}": float(np.mean([describe(x)[k] for x in raw[s]]))
                          for s in SAMPLERS for k in describe(raw[s][0])}}
    first[nfe] = {s: raw[s][0] for s in SAMPLERS}
  return out, first


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
  process, params = runs.train_model("gaussian", s, workdir, data, s.model, s.train,
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
  process, params = runs.train_model("gaussian", c, workdir, data, c.unet, c.train,
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


def _plot(panels, path):
  """One panel per dataset: d(DDPM, DDIM) and the floor against NFE, to-data distances dashed,
  the permutation test's p-value beside each DDPM-vs-DDIM point."""
  import matplotlib.pyplot as plt
  from matplotlib.ticker import FormatStrFormatter, LogLocator

  fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.0), squeeze=False)
  for ax, (title, ylabel, rows, data_floor, fmt) in zip(axes[0], panels):
    nfe = [r["NFE"] for r in rows]
    d = [r["ddpm_vs_ddim"] for r in rows]
    ax.errorbar(nfe, d, [r["ddpm_vs_ddim_std"] for r in rows], color="#d62728", marker="o",
                capsize=3, lw=2, label="DDPM vs DDIM (p: permutation test, seeds pooled)")
    for x, y, r in zip(nfe, d, rows):
      p, smallest = r["p_value"], 1.0 / (1 + r["permutations"])
      ax.annotate(f"p≤{p:.2g}" if p <= smallest else f"p={p:.2g}", (x, y), xytext=(4, 7),
                  textcoords="offset points", fontsize=8, color="#d62728")
    f = np.array([r["floor"] for r in rows])
    sf = np.array([r["floor_std"] for r in rows])
    ax.plot(nfe, f, color="#555555", marker="s", ms=4, lw=1.5,
            label="floor: DDPM vs DDPM of another seed (band ± 2 std)")
    ax.fill_between(nfe, np.maximum(f - 2 * sf, 0.5 * f.min()), f + 2 * sf, color="gray",
                    alpha=0.2, lw=0)
    for smp, color in (("ddpm", "#1f77b4"), ("ddim", "#2ca02c")):
      ax.plot(nfe, [r[f"{smp}_to_data"] for r in rows], color=color, ls="--", marker=".",
              lw=1, alpha=0.8, label=f"{smp.upper()} vs held-out data")
    ax.axhline(data_floor, color="black", ls=":", lw=1, label="real data vs held-out (same n)")
    ax.set_xscale("log", base=2)
    ax.set_xlim(min(nfe) / 1.4, max(nfe) * 1.6)  # room for the p-values
    ax.set_xticks(nfe)
    ax.set_xticklabels([str(v) for v in nfe])
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter(fmt))
    ax.yaxis.set_minor_formatter(FormatStrFormatter(""))
    ax.set_xlabel("network evaluations per sample (NFE)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7.5)
  fig.suptitle("Do DDPM and DDIM reach the same distribution? (mean ± std over sampling "
               "seeds)", fontsize=12)
  fig.tight_layout()
  plots.save_figure(fig, path)
  plt.close(fig)


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
  _plot(panels, os.path.join(workdir, "distance_vs_nfe.png"))
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
