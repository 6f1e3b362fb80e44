"""What a comparison measures: held-out bits, sample scores over seeds, the best spec per NFE.

A row's metric is the mean over training seeds with its spread (`tables.mean_std`):
row[m] = (1 / S) sum_s m_s and row[m + '_std'] = sqrt((1 / S) sum_s (m_s - row[m])^2).
"""

from __future__ import annotations

import math

import numpy as np

from ardiff import experiment_helpers, model_cache, sample_cache
from ardiff.comparison.families import is_gaussian
from ardiff.metrics import held_out
from ardiff.processes.spec import parse_spec
from ardiff.report.tables import mean_std, pareto_front

METRICS = (("fd", "Fréchet distance (lower is better)", True),
           ("precision", "precision (k-NN, higher is better)", False),
           ("recall", "recall (k-NN, higher is better)", False))


def test_bits(family, model, data, key, num: int = 0) -> float:
  """Held-out bits per pixel of a family's trained model (`held_out_bits`)."""
  return held_out_bits(family.kind, model.process, model.params, data, key, num)


def held_out_bits(kind: str, process, params, data, key, num: int = 0) -> float:
  """Held-out bits per pixel on the first `num` test images (0: all), unconditional: each
  process's `nll_bound` (exact for raster AR, the ARDM and upscale bounds along one random order
  per image, the diffusion bound from 32 sampled timesteps per image). `kind`: the process's
  builder name (`ardiff.build`)."""
  x = data.x_test[:num or None]
  inputs = model_cache.process_inputs(process, x, data)
  return held_out.test_bpd(process, params, inputs,
                           np.full((len(x),), data.num_classes, np.int32), key, batch_size=256,
                           **({"num_t_samples": 32} if is_gaussian(kind) else {}))


def score(quality, images) -> dict:
  precision, recall = quality.precision_recall(images)
  return {"fd": quality.frechet(images), "precision": precision, "recall": recall}


def floors(quality, n: int) -> dict:
  """Each metric of n train images against the test split: the best a model can expect."""
  out = {"fd": quality.floor(n)}
  out["precision"], out["recall"] = quality.floor_precision_recall(n)
  return out


def add_mean_std(row: dict, scores) -> dict:
  """row with each metric's mean and std over the per-seed `scores`."""
  for metric, _, _ in METRICS:
    row[metric], row[f"{metric}_std"] = mean_std([s[metric] for s in scores])
  return row


def cached_sampler(c):
  """sample(model, params, spec text, key, labels): drawn in batches of `sample_batch`, kept
  beside the model (`sample_cache`) when `cache_samples`."""

  def sample(model, params, text, key, labels):
    spec = parse_spec(text)
    return sample_cache.cached_samples(
        model.directory, params, f"{text}|batch={c.sample_batch}", key, labels,
        lambda: experiment_helpers.in_batches(
            lambda k, y: model.process.sample(params, k, y, spec), key, labels, c.sample_batch),
        enabled=c.cache_samples)

  return sample


def best_per_nfe(rows) -> list[dict]:
  """The rows on the (NFE, FD) Pareto front, one per NFE (the lowest FD), sorted by NFE: at
  each NFE the best sampler that no cheaper one beats."""
  front = {x for x, _ in pareto_front([r["NFE"] for r in rows], [r["fd"] for r in rows])}
  best = {}
  for r in rows:
    if r["NFE"] in front and (r["NFE"] not in best or r["fd"] < best[r["NFE"]]["fd"]):
      best[r["NFE"]] = r
  return [best[x] for x in sorted(best)]


def keep_grid(grids: dict, name: str, nfe: int, images, target: int = 8) -> None:
  """One grid row per series: the budget nearest `target` NFE (on a log scale)."""
  best = grids.get(name)
  if best is None or abs(math.log(nfe / target)) < abs(math.log(best[0] / target)):
    grids[name] = (nfe, images[:10])

