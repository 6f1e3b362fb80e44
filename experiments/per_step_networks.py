"""One network per generation step vs one shared network, for S-step parallel decoding (ARDM).

  ardiff run experiments/per_step_networks.py --workdir=runs/per_step_networks

Claim: a separate network for every generation step is "the best way to get the most accurate
predictions ... but very inefficient". The plan: S steps of k = L / S pixels each, in a random
order (digits: S = 4, 16 pixels per step). Step s starts with t_s = s k pixels revealed and
costs C_s = E[k / (L - t_s) sum_{hidden i} -log p(x_i | x_revealed)] nats; the S-step bound is
sum_s C_s (ardiff.processes.autoregressive.step_restricted, which also trains the networks):
  per-step networks   network s trains only on masks with exactly t_s pixels revealed, N steps
                      each (S N steps in all);
  shared, N steps     one network, s uniform per example, the same loss, N steps;
  shared, S N steps   the same at matched total compute;
  ARDM (t uniform)    (`ardm_baseline`) the usual ARDM loss over every t = 0..L-1, S N steps.
All have the `ar` section's width and depth. Scored on the test split: each C_s is averaged over
`eval_draws` random reveal sets per image, the same sets for every model (paired), and shown as
bits per pixel revealed at that step (C_s / (k ln 2)); the bound in bits per pixel is
sum_s C_s / (L ln 2), with its standard error over test images and the paired difference to the
per-step networks.

Defaults cut for a loaded 2-core CPU: width 32, 2 heads, depth 2, batch 32, N = 300 steps,
EMA decay 0.99. Writes per_step.png, results.md/.csv.
"""

from __future__ import annotations

import functools
import os

import jax
import matplotlib.pyplot as plt
import ml_collections
import numpy as np

from ardiff import build, model_cache
from ardiff.configs import require, sized
from ardiff.data.levels import to_tokens
from ardiff.presets import (SCALES, config_dataset, image_config, train_section,
                            validate_image_config)
from ardiff.processes.autoregressive import orders
from ardiff.processes.autoregressive.step_restricted import (StepRestrictedAR, revealed_counts,
                                                             step_cost)
from ardiff.report import plots, write_results

SMOKE = ["train.steps=3", "train.log_every=3", "ar.width=16", "ar.depth=1",
         "num_steps=2", "eval_draws=1", "eval_examples=16", "ardm_baseline=False"]

LN2 = np.log(2.0)


@sized(scales=SCALES, smoke=SMOKE)
def get_config(scale: str = "small") -> ml_collections.ConfigDict:
  c = image_config(scale, ar=True)
  c.model_cache = "models"  # step-restricted networks: this experiment's own
  if scale == "small":
    c.ar.width, c.ar.heads = 32, 2
    c.train = train_section(steps=300, batch_size=32, warmup_steps=50, ema_decay=0.99,
                            log_every=50, checkpoint_every=100_000)
  c.num_steps = 4  # S: generation steps of L / S pixels each
  c.eval_draws = 4  # random reveal sets per test image and step
  c.eval_examples = 0  # test images scored (0: all)
  c.ardm_baseline = True  # also train the usual ARDM (t uniform in 0..L-1) for S N steps
  return c


def validate(c: ml_collections.ConfigDict) -> None:
  validate_image_config(c, null_label=False)
  require(isinstance(c.num_steps, int) and c.num_steps >= 2, "num_steps",
          f"must be an integer >= 2, got {c.num_steps!r}")
  require(c.eval_draws >= 1, "eval_draws", f"must be >= 1, got {c.eval_draws}")
  require(c.eval_examples >= 0, "eval_examples", f"must be >= 0 (0: all), got {c.eval_examples}")


@functools.partial(jax.jit, static_argnums=(0, 7))
def _step_costs(model, params, x, y, key, t, k, draws):
  """C_s per test example [B] for t revealed and k revealed next (one compile for all s)."""
  return step_cost(lambda tok, lab: model.apply(params, tok, lab), x, y, key, t, k,
                   model.mask_id, draws)


def _train(name, process, c, workdir, data, steps, extra_key, kind=None):
  """Train or restore; returns (EMA params, training.json)."""
  train_cfg = ml_collections.ConfigDict(dict(c.train, steps=int(steps)))
  model_key = {k: v for k, v in c.ar.items() if k not in build.COMPUTE_ONLY_FIELDS}
  # A registered process gets a model card, so that `ardiff sample` can load it.
  card = None if kind is None else dict(kind=kind, model_cfg=c.ar, build_extra={})
  model = model_cache.fit_cached(process, c, workdir, data, train_cfg,
                                 name=f"{data.name}-{name}",
                                 key=(data.name, model_key, extra_key),
                                 inputs=to_tokens(data.x_train), keep_steps=True, card=card)
  return model.params, model.info


def run(c: ml_collections.ConfigDict, workdir: str) -> list[dict]:
  validate(c)
  data = config_dataset(c)
  L, S = data.num_tokens, c.num_steps
  require(L % S == 0, "num_steps", f"must divide the {L} pixels, got {S}")
  k = L // S
  sizes = orders.uniform_step_sizes(L, k)
  counts = revealed_counts(sizes)
  n_eval = c.eval_examples or len(data.x_test)
  x_test = np.asarray(to_tokens(data.x_test)[:n_eval])
  y_test = np.asarray(data.y_test[:n_eval], np.int32)
  N = c.train.steps
  model = build.build("ardm", c.ar, data, c.dtype).model
  key = jax.random.key(c.seed)

  def costs(params_per_step):
    """[S, n_eval] nats: C_s per test image, network params_per_step[s] for step s."""
    return np.stack([np.asarray(_step_costs(model, params_per_step[s], x_test, y_test,
                                            jax.random.fold_in(key, s), counts[s], float(k),
                                            c.eval_draws), np.float64) for s in range(S)])

  def restricted(train_steps):
    return StepRestrictedAR(model, sizes, train_steps, p_uncond=c.ar.p_uncond,
                            data_shape=data.shape)

  plan = {"step_sizes": list(sizes)}
  sets = []  # (label, steps per network, networks, costs [S, n], training.json per network)
  params, infos = [], []
  for s in range(S):
    p, info = _train(f"step{s}of{S}", restricted((s,)), c, workdir, data, N,
                     dict(plan, train_steps=[s]))
    params.append(p)
    infos.append(info)
  sets.append((f"per-step networks ({S} x {N} steps)", N, S, costs(params), infos))
  for steps in (N, S * N):
    p, info = _train("shared", restricted(None), c, workdir, data, steps,
                     dict(plan, train_steps=list(range(S))))
    sets.append((f"shared network ({steps} steps)", steps, 1, costs([p] * S), [info]))
  if c.ardm_baseline:
    ardm = build.build("ardm", c.ar, data, c.dtype)
    p, info = _train("ardm", ardm, c, workdir, data, S * N, {"ardm": "t uniform"}, kind="ardm")
    sets.append((f"ARDM, t uniform ({S * N} steps)", S * N, 1, costs([p] * S), [info]))

  reference = sets[0][3].sum(axis=0)  # per-step networks' bound per test image (nats)
  rows, series = [], []
  for label, steps, networks, cost, infos in sets:
    total = cost.sum(axis=0) / (L * LN2)  # bits per pixel per test image
    diff = (cost.sum(axis=0) - reference) / (L * LN2)
    row = {"model": label, "networks": networks, "steps each": steps,
           "total steps": steps * networks,
           "train TFLOP": sum(i.get("flops_per_step", 0.0) * i.get("steps", 0) for i in infos)
           / 1e12,
           "train seconds": sum(i.get("wall_seconds", 0.0) for i in infos)}
    for s in range(S):
      row[f"step {s} (t={counts[s]})"] = cost[s].mean() / (k * LN2)
    row.update({"bound_bpd": total.mean(), "se": total.std(ddof=1) / np.sqrt(len(total)),
                "minus per-step": diff.mean(),
                "diff se": diff.std(ddof=1) / np.sqrt(len(diff)) if label != sets[0][0] else 0.0})
    rows.append(row)
    per_pixel = cost / (k * LN2)  # [S, n] bits per pixel revealed at each step
    series.append((f"{label}: bound {total.mean():.3f} ± {row['se']:.3f} bpp", list(range(S)),
                   per_pixel.mean(axis=1),
                   per_pixel.std(axis=1, ddof=1) / np.sqrt(per_pixel.shape[1])))

  fig = plots.line_plot(series, xlabel="generation step s (pixels revealed before it: t)",
                        ylabel="test cost of the step (bits per pixel it reveals)",
                        title=f"{S}-step decoding, {k} random pixels per step: per-step vs "
                              "shared networks")
  ax = fig.axes[0]
  ax.set_xticks(range(S), [f"{s} (t={counts[s]})" for s in range(S)])
  ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2,
            title="bars: ± 1 standard error over test images", title_fontsize=8)
  plots.save_figure(fig, os.path.join(workdir, "per_step.png"), bbox_inches="tight")
  plt.close(fig)
  notes = (
      f"{data.description}. Plan: {S} steps of {k} random pixels. Every network: width "
      f"{c.ar.width}, depth {c.ar.depth}, heads {c.ar.heads}; batch {c.train.batch_size}, lr "
      f"{c.train.learning_rate}, EMA {c.train.ema_decay}, its own cosine schedule over its "
      f"steps. Columns 'step s': the test cost of step s in bits per pixel it reveals, "
      f"C_s / ({k} ln 2), on {n_eval} test images (given their labels) x {c.eval_draws} reveal "
      "sets (the same sets "
      f"for every model). bound_bpd = sum_s C_s / ({L} ln 2) with its standard error over test "
      "images; 'minus per-step': the paired difference to the per-step networks (negative: "
      "better than them). train TFLOP: XLA's cost of the train step x steps, summed over the "
      "networks; train seconds: wall time of training (compilation and a loaded CPU "
      "included; absent for runs restored from an older cache).")
  write_results(workdir, rows, f"{S}-step parallel decoding: per-step vs shared networks",
                notes)
  return rows
