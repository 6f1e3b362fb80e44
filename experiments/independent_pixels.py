"""Independent pixels: predicting k pixels at once costs nothing when the pixels are independent.

  ardiff run experiments/independent_pixels.py --workdir=runs/independent_pixels

Two ARDMs, one on digits whose pixel values are shuffled across images
(`digits_independent`: the digits' per-pixel marginals, no dependence) and one on the real
digits; the bound B(k) of k-per-step parallel decoding against k, beside the closed-form
entropy of the per-pixel marginals. For independent pixels B(k) = B(1) for every k. The maths,
the cuts for a 2-core CPU and the lab notes: docs/independent_pixels.md.
`--config=paper` trains the paper-size transformers instead. Writes bits_vs_k.png,
samples.png, results.md/.csv.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ardiff import model_cache
from ardiff.configs import require, require_choice, sized
from ardiff.data.levels import to_tokens
from ardiff.data.synthetic import (independent_pixels, marginal_cross_entropy_bits,
                                   marginal_entropy_bits)
from ardiff.metrics.frechet import frechet_distance
from ardiff.metrics.sample_quality import SampleQuality
from ardiff.presets import (SCALES, config_dataset, image_config, train_section,
                            validate_image_config)
from ardiff.processes.autoregressive.budget import budget_cost
from ardiff.processes.autoregressive import objectives
from ardiff.processes.autoregressive.orders import uniform_step_sizes
from ardiff.report import plots, write_results

SMOKE = ["train.steps=4", "train.log_every=2", "ar.width=32", "ar.depth=1",
         "ks=[1, 8, 64]", "order_seeds=2", "eval_examples=24", "num_samples=24",
         "sample_ks=[64]", "classifier_steps=20"]

LN2 = np.log(2.0)
CONDITIONS = ("null", "class")


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True)
  c.ar.p_uncond = 0.5  # the bounds are unconditional: train that stream as much as the other
  if scale == "small":  # cut for the shared 2-core CPU (module docstring)
    c.ar.width = 32
    c.train = train_section(steps=400, learning_rate=2e-3, warmup_steps=50, ema_decay=0.99,
                            log_every=100)
  c.shuffle_seed = 0  # which independent shuffle of the pixels
  c.ks = [1, 2, 4, 8, 16, 32, 64]  # pixels per parallel step
  c.order_seeds = 3  # independent draws of the random orders behind L_t (mean +- std)
  c.eval_examples = 0  # test images for L_t; 0: the whole test split
  c.condition = "null"  # the label the bounds condition on: null (p(x)) or class (p(x | y))
  c.num_samples = 200  # unconditional samples per (dataset, k) for FD; 0 skips sampling
  c.sample_ks = [1, 8, 64]
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  L = validate_image_config(c).num_tokens
  require(len(c.ks) >= 1 and all(isinstance(k, int) and 1 <= k <= L for k in c.ks), "ks",
          f"must be pixel counts per step in 1..{L}, got {list(c.ks)}")
  require(1 in c.ks, "ks", "must contain 1: every increase is measured against k = 1")
  require(all(k in c.ks for k in c.sample_ks), "sample_ks",
          f"must be a subset of ks={list(c.ks)} (FD goes in those rows), got {list(c.sample_ks)}")
  require(isinstance(c.order_seeds, int) and c.order_seeds >= 1, "order_seeds",
          f"must be an integer >= 1, got {c.order_seeds!r}")
  require(isinstance(c.eval_examples, int) and c.eval_examples >= 0, "eval_examples",
          f"must be an integer >= 0 (0: the whole test split), got {c.eval_examples!r}")
  require(isinstance(c.num_samples, int) and (c.num_samples == 0 or c.num_samples >= 2),
          "num_samples", f"must be 0 (skip) or >= 2, got {c.num_samples!r}")
  require(isinstance(c.shuffle_seed, int) and c.shuffle_seed >= 0, "shuffle_seed",
          f"must be an integer >= 0, got {c.shuffle_seed!r}")
  require_choice(c.condition, "condition", CONDITIONS)


def step_losses(process, params, data, labels, key, num_seeds, num_examples):
  """L_t in nats for t = 0..L-1 on the test split, one row per draw of orders: [seeds, L].

  The same estimator as `evaluate.ardm_step_losses` (objectives.per_step_losses), jitted once
  per process with the parameters traced, so the draws and labels reuse one program."""
  n = len(data.x_test) if num_examples <= 0 else min(num_examples, len(data.x_test))
  toks = jnp.asarray(to_tokens(data.x_test[:n]))
  fn = _losses_fn(process.model)
  return np.stack([np.asarray(fn(params, toks, jnp.asarray(labels[:n]), jax.random.fold_in(key, s)),
                              np.float64) for s in range(num_seeds)])


@functools.lru_cache(maxsize=None)
def _losses_fn(model):
  def fn(params, toks, labels, key):
    logits_fn = lambda t, y: model.apply(params, t, y)  # noqa: E731
    return objectives.per_step_losses(logits_fn, toks, labels, key, model.mask_id,
                                      batch_size=128)

  return jax.jit(fn)


def bounds_bpd(losses: np.ndarray, ks) -> np.ndarray:
  """B(k) in bits per pixel for each row of L_t [seeds, L] and each k: [seeds, len(ks)]."""
  L = losses.shape[1]
  return np.array([[budget_cost(row, uniform_step_sizes(L, k)) / (L * LN2) for k in ks]
                   for row in losses])


def _plot(curves, closed, ks, path, *, condition, num_test):
  """Left: L_t against t (bits); right: B(k) against k with the closed-form lines."""
  import matplotlib.pyplot as plt

  fig, (ax_t, ax_k) = plt.subplots(1, 2, figsize=(12.0, 4.8))
  colors = {"independent": "#1f77b4", "real": "#d62728"}
  for name, (title, losses, bounds) in curves.items():
    bits = losses / LN2
    t = np.arange(bits.shape[1])
    ax_t.plot(t, bits.mean(0), color=colors[name], label=title, lw=1.5)
    ax_t.fill_between(t, bits.min(0), bits.max(0), color=colors[name], alpha=0.2, lw=0)
    ax_k.errorbar(ks, bounds.mean(0), yerr=bounds.std(0), color=colors[name], marker="o",
                  ms=5, capsize=3, label=title)
  for ax in (ax_t, ax_k):
    for (label, value), style in zip(closed, ("--", ":")):
      ax.axhline(value, ls=style, c="gray", lw=1.2, label=label)
    ax.grid(alpha=0.3, which="both")
  ax_t.set_xlabel("pixels already revealed t (of 64)")
  ax_t.set_ylabel("L_t: bits for one more pixel")
  ax_t.set_title("Per-pixel loss given t revealed (band: min-max over order draws)",
                 fontsize=10)
  ax_k.set_xscale("log", base=2)
  ax_k.set_xticks(ks)
  ax_k.set_xticklabels([str(k) for k in ks])
  ax_k.set_xlabel("pixels predicted at once per step, k   (steps = 64 / k)")
  ax_k.set_ylabel("bound of k-per-step decoding (bits per pixel)")
  ax_k.set_title("B(k) = sum_s k L_{sk} / (64 ln 2)  (mean ± std over order draws)",
                 fontsize=10)
  ax_k.legend(fontsize=8, loc="center right")
  fig.suptitle(f"Predicting k pixels at once: independent vs real pixels "
               f"(ARDM, test split {num_test} images, label: {condition})", fontsize=12)
  fig.tight_layout()
  plots.save_figure(fig, path)
  plt.close(fig)


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  real = config_dataset(c)
  shuffled = independent_pixels(real, seed=c.shuffle_seed)
  L, levels = real.num_tokens, real.num_levels
  key = jax.random.key(c.seed)

  # Closed forms: the product of per-pixel marginals (identical columns in both datasets).
  h_train = float(marginal_entropy_bits(shuffled.x_train, levels).mean())
  h_test = float(marginal_entropy_bits(shuffled.x_test, levels).mean())
  ce_test = float(marginal_cross_entropy_bits(shuffled.x_train, shuffled.x_test, levels).mean())
  closed = [(f"entropy of the product of train marginals: {h_train:.3f} bits", h_train),
            (f"train marginals scored on test (add-1/2): {ce_test:.3f} bits", ce_test)]
  rows = [{"dataset": "closed form (no network)", "k": "any",
           "bpd": h_train, "note": "H of the product of train-split per-pixel marginals"},
          {"dataset": "closed form (no network)", "k": "any", "bpd": h_test,
           "note": "H of the product of test-split marginals (oracle on test)"},
          {"dataset": "closed form (no network)", "k": "any", "bpd": ce_test,
           "note": "test cross-entropy under train marginals, add-1/2 counts"}]

  quality = None
  if c.num_samples:
    quality = SampleQuality.for_experiment(c, workdir, real)
  curves, grids, grid_labels = {}, [], []
  for name, data in (("independent", shuffled), ("real", real)):
    process, params = model_cache.train_model("ardm", c, workdir, data, c.ar, c.train)
    labels = (np.full(len(data.x_test), data.num_classes, np.int32) if c.condition == "null"
              else data.y_test)
    losses = step_losses(process, params, data, labels, jax.random.fold_in(key, 1),
                         c.order_seeds, c.eval_examples)
    bounds = bounds_bpd(losses, c.ks)
    title = f"{data.name} ({'shuffled pixels' if name == 'independent' else 'real images'})"
    curves[name] = (title, losses, bounds)
    base = bounds[:, list(c.ks).index(1)][:, None]
    increase = bounds - base
    fds = _sample_fds(c, process, params, data, quality, key, grids, grid_labels)
    for j, k in enumerate(c.ks):
      row = {"dataset": data.name, "k": k, "steps": -(-L // k),
             "bpd": float(bounds[:, j].mean()), "bpd_std": float(bounds[:, j].std()),
             "increase_over_k1": float(increase[:, j].mean()),
             "increase_std": float(increase[:, j].std()),
             "bpd_minus_marginal_ce": float(bounds[:, j].mean() - ce_test)}
      if k in fds:
        row.update(fds[k])
      rows.append(row)
    if quality is not None:
      rows.append({"dataset": data.name, "k": "data", "note": "FD floor: n train images vs test",
                   "fd": _fd(quality, data.x_train[:c.num_samples], data.x_test)})

  _plot(curves, closed, list(c.ks), os.path.join(workdir, "bits_vs_k.png"),
        condition=c.condition, num_test=len(_eval_slice(c, real)))
  if grids:
    plots.image_grid(np.concatenate(grids), os.path.join(workdir, "samples.png"), nrow=16,
                     row_labels=grid_labels, vmax=levels - 1, close=True,
                     title="Unconditional ARDM samples, k pixels per step (first 16)")

  notes = (f"{real.description}; {shuffled.name}: each pixel position's values shuffled across "
           f"the images of its own split (shuffle seed {c.shuffle_seed}). ARDM transformers width "
           f"{c.ar.width}, depth {c.ar.depth}, p_uncond {c.ar.p_uncond}, {c.train.steps} steps of "
           f"batch {c.train.batch_size}, one per dataset. bpd: the bound B(k) = sum_s k L_(sk) / "
           f"(L ln 2) of decoding k random pixels per step, L_t measured on "
           f"{len(_eval_slice(c, real))} test images with label '{c.condition}'; mean and std "
           f"over {c.order_seeds} draws of the random orders (one training seed). "
           "increase_over_k1: B(k) - B(1), paired within each draw. bpd_minus_marginal_ce: B(k) "
           "minus the test cross-entropy under the product of the train marginals (the "
           "closed-form reference for a model fitted on train). fd: Fréchet distance of "
           f"{c.num_samples} unconditional samples (ardm:k=K) to the dataset's own test split in "
           "the real-digits classifier's features; the 'data' row is the floor.")
  write_results(workdir, rows, "Independent pixels: the price of predicting k pixels at once",
                notes)
  return rows


def _eval_slice(c, data):
  return data.x_test if c.eval_examples <= 0 else data.x_test[:c.eval_examples]


def _fd(quality, samples, test):
  return frechet_distance(quality.features(samples), quality.features(test))


def _sample_fds(c, process, params, data, quality, key, grids, grid_labels):
  """FD of unconditional ardm:k=K samples to the dataset's test split, for K in sample_ks."""
  if quality is None:
    return {}
  null = np.full(c.num_samples, data.num_classes, np.int32)
  out = {}
  for k in c.sample_ks:
    x = np.asarray(process.sample(params, jax.random.fold_in(key, 2), null, f"ardm:k={k}"))
    out[k] = {"fd": _fd(quality, x, data.x_test)}
    grids.append(x[:16])
    grid_labels.append(f"{data.name} k={k}")
  return out
