"""Do DDPM and DDIM reach one law? Distances between their sample sets against the floor of
sampling noise, and a permutation test (experiments/ddpm_vs_ddim.py).

For sets A (sampler 1) and B (sampler 2) of n samples each, per NFE and sampling seed i:
  d(A_i, B_i)           the distance between the samplers' sets;
  floor  d(A_i, A_i+1)  two independent sets of one sampler: what sampling noise alone gives
                        at n (seeds paired cyclically, so both compare sets of the same size);
and a two-sample permutation test of H0 "A and B draw from one law" with the same distance as
statistic on the seeds' samples pooled.
"""

from __future__ import annotations

import jax
import numpy as np

SAMPLERS = ("ddpm", "ddim")  # the two samplers compared, in the order their keys are folded


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
