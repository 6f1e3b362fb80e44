"""The DDPM-vs-DDIM comparison's measurements against exact enumeration and hand counts."""

from __future__ import annotations

import itertools

import jax
import numpy as np

from ardiff.metrics.same_law import SAMPLERS, compare, permutation_test


def _mean_gap(a, b):
  return float(abs(a.mean() - b.mean()))


def test_permutation_p_value_matches_the_exact_split_count():
  """a = [0, 0, 0], b = [10, 10, 10]: of the C(6, 3) = 20 equally likely splits of the pooled
  values, exactly 2 (the observed one and its mirror) reach the observed gap 10, so the p-value
  (1 + #{d_perm >= d_obs}) / (1 + num) tends to 2 / 20 = 0.1."""
  a, b = np.zeros(3), np.full(3, 10.0)
  pooled = np.concatenate([a, b])
  splits = [np.array(s) for s in itertools.combinations(range(6), 3)]
  exact = np.mean([_mean_gap(pooled[list(s)], np.delete(pooled, s)) >= 10 for s in splits])
  assert exact == 0.1
  observed, null_mean, p = permutation_test(a, b, _mean_gap, num=4000, seed=1)
  assert observed == 10.0
  assert abs(p - exact) < 0.015  # binomial std at 4000 draws: 0.005
  # the null mean is the gap averaged over all splits: enumerated exactly
  exact_mean = np.mean([_mean_gap(pooled[list(s)], np.delete(pooled, s)) for s in splits])
  assert abs(null_mean - exact_mean) < 0.2


def test_p_value_is_one_when_the_samples_are_one_set():
  x = np.arange(8.0)
  assert permutation_test(x, x.copy(), _mean_gap, num=50)[2] == 1.0  # every d_perm >= 0


def test_compare_pairs_seeds_and_folds_keys_per_sampler():
  """sample returns the key's first draw as a 1-row set: every distance is then a gap between
  known numbers, so the pairing (DDPM seed i with DDIM seed i, floors i with i + 1 mod seeds)
  and the keys (fold_in(key, 2i + j) for sampler j) can be checked by hand."""
  key = jax.random.key(0)

  def draw(k):
    return float(jax.random.uniform(k))

  def sample(spec, k):
    return np.array([[draw(k) + (100.0 if spec.startswith("ddim") else 0.0)]])

  seeds = 3
  out, first = compare(sample, lambda x: x, _mean_gap, lambda x: {"mean": float(x.mean())},
                       [4], seeds, key, permutations=10)
  d = out[4]
  v = {s: [draw(jax.random.fold_in(key, 2 * i + j)) + 100.0 * j for i in range(seeds)]
       for j, s in enumerate(SAMPLERS)}
  np.testing.assert_allclose(d["ddpm_vs_ddim"], [abs(v["ddpm"][i] - v["ddim"][i])
                                                 for i in range(seeds)])
  np.testing.assert_allclose(d["floor"], [abs(v["ddpm"][i] - v["ddpm"][(i + 1) % seeds])
                                          for i in range(seeds)])
  np.testing.assert_allclose(d["floor_ddim"], [abs(v["ddim"][i] - v["ddim"][(i + 1) % seeds])
                                               for i in range(seeds)])
  assert d["stats"]["ddim_mean"] == np.mean(v["ddim"])
  assert first[4]["ddpm"][0, 0] == v["ddpm"][0]
  assert d["p_value"] < 0.5 and d["permutations"] == 10  # 100 apart: the laws differ
