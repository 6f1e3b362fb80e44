"""Timing of raster sampling with the KV cache against the no-cache reference sampler.

Both samplers run one jitted scan over positions; per step the cache sampler runs the model on
one position (attending over the preallocated, masked cache), the reference reruns the full
causal forward. The cache sampler is always timed on full L-token samples. The reference is
slow at L = 784 (a full [B, 784] forward per token), so it may be timed on its first
``max_timed_steps`` positions only; its per-step cost is the same at every position (static
shapes), so the rate is extrapolated by L / timed steps. Rows say how many steps were timed.
"""

from __future__ import annotations

import time
from typing import Sequence

import jax
import jax.numpy as jnp

from ardiff.autoregressive import sampling
from ardiff.models.transformer import Transformer


def _time(fn, repeats: int) -> float:
  """Best wall time in seconds over repeats, after one untimed (compiling) call."""
  jax.block_until_ready(fn())
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def bench_kv_cache(
    seq_lens: Sequence[int] = (64, 784), batch: int = 64, *, vocab_size: int = 17,
    num_classes: int = 10, width: int = 64, depth: int = 2, heads: int = 4,
    repeats: int = 2, max_timed_steps: int | None = 8, seed: int = 0,
) -> list[dict]:
  """Samples per second with and without the KV cache for each sequence length.

  Args:
    seq_lens: sequence lengths L to time (64 = 8x8 digits, 784 = 28x28 MNIST).
    batch: samples drawn in parallel.
    vocab_size, num_classes, width, depth, heads: the (randomly initialised) causal model.
    repeats: timed repetitions (the best is kept) after one untimed compiling call.
    max_timed_steps: the no-cache reference is timed on its first min(L, max_timed_steps)
      positions and extrapolated to L (None = all L). The default 8 keeps L = 784 at about a
      minute on a 2-core CPU (about 3 s per reference step there).
    seed: PRNG seed for the parameters and the samples.

  Returns:
    One dict per L: seq_len, batch, timed_steps_cache (= L), timed_steps_nocache,
    seconds_cache / seconds_nocache (best wall time for the timed steps),
    samples_per_s_cache / samples_per_s_nocache (full L-token samples per second) and
    speedup (= samples_per_s_cache / samples_per_s_nocache).
  """
  rows = []
  key = jax.random.key(seed)
  y = jnp.arange(batch, dtype=jnp.int32) % num_classes
  for length in seq_lens:
    model = Transformer(vocab_size=vocab_size, seq_len=length, num_classes=num_classes,
                        width=width, depth=depth, heads=heads)
    params = model.init(key, jnp.zeros((1, length), jnp.int32), y[:1])
    steps = {"cache": length,
             "nocache": length if max_timed_steps is None else min(length, max_timed_steps)}
    row = {"seq_len": length, "batch": batch}
    for name in ("cache", "nocache"):
      seconds = _time(lambda n=steps[name], c=name == "cache": sampling.raster_sample(
          model, params, key, y, num_steps=n, use_cache=c), repeats)
      row[f"timed_steps_{name}"] = steps[name]
      row[f"seconds_{name}"] = seconds
      row[f"samples_per_s_{name}"] = batch * steps[name] / (seconds * length)
    row["speedup"] = row["samples_per_s_cache"] / row["samples_per_s_nocache"]
    rows.append(row)
  return rows
