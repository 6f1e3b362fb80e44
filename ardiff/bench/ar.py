"""Raster sampling with the KV cache (A) against the no-cache reference (B), interleaved.

Both run one jitted program scanning over positions; per step the cache sampler runs the model
on one position (XLA's decode attention over a cache sized per 128-position segment, the empty
slots masked: `decode_attention.prefix_segments`), the reference reruns the full causal
forward. On an accelerator a third column times the cache sampler with the Pallas decode
kernel (`ardiff.kernels.decode_attention`, which reads only the filled prefix). The cache
sampler is always timed on full L-token samples. The reference is slow at
L = 784 (a full [B, 784] forward per token), so it is timed on its first `max_timed_steps`
positions only; its per-step cost is the same at every position (static shapes), so its rate
is extrapolated by L / timed steps. Rows say how many steps were timed.

Where torch and transformers are installed, a peer column times Hugging Face ``generate`` on a
GPT-2 of the same width, depth and heads sampling the same L tokens per example with its own KV
cache (`ardiff.bench.hf_peer`), in the same interleaved rounds; "cache vs HF generate" is its
median time over the cache sampler's (> 1: ours is faster). Without them the column is absent.
"""

from __future__ import annotations

from typing import Sequence

TITLE = "Autoregressive sampling: KV cache vs recompute"
NOTE = ("Random-init causal transformer (width 64, depth 2, 4 heads, 17 levels), batch 64. "
        "The recompute reference is timed on its first `recompute steps` positions and "
        "extrapolated to L (same cost per position); speedup = ratio of the samples/s, "
        "from medians of the same run. HF generate (where torch and transformers are "
        "installed): a random GPT-2 of the same width/depth/heads (vocabulary: the levels plus "
        "one token per label, the prompt), sampling the same L tokens with its KV cache on one "
        "torch thread (`ardiff/bench/hf_peer.py`).")


def bench_kv_cache(seq_lens: Sequence[int] = (64, 784), batch: int = 64, *,
                   vocab_size: int = 17, num_classes: int = 10, width: int = 64, depth: int = 2,
                   heads: int = 4, max_timed_steps: int | None = 8, seed: int = 0) -> list[dict]:
  """One row per sequence length L: times and full-sample rates with and without the cache.

  max_timed_steps: the reference is timed on min(L, max_timed_steps) positions (None = all L);
  8 keeps L = 784 at a few minutes on a 2-core CPU (about 3 s per reference step there).
  """
  import math

  import jax
  import jax.numpy as jnp

  from ardiff import build
  from ardiff.bench import REPEATS, hf_peer
  from ardiff.bench.timer import interleaved, ratio
  from ardiff.presets import transformer_section
  from ardiff.data.base import DataSpec
  from ardiff.processes.autoregressive import decode

  key = jax.random.key(seed)
  y = jnp.arange(batch, dtype=jnp.int32) % num_classes
  section = transformer_section(width=width, depth=depth, heads=heads)
  out = []
  for length in seq_lens:
    side = math.isqrt(length)
    shape = (side, side, 1) if side * side == length else (length, 1, 1)
    spec = DataSpec(f"{length} tokens", "image", shape, num_classes, vocab_size)
    process = build.build("raster", section, spec)
    params = process.init_params(key, {"x": jnp.zeros((1, length), jnp.int32), "y": y[:1]})
    steps = {"cache": length,
             "recompute": length if max_timed_steps is None else min(length, max_timed_steps)}
    models = {"cache": process.model, "recompute": process.model}
    if jax.default_backend() != "cpu":  # the Pallas kernel (interpreted on CPU: not a timing)
      steps["pallas"] = length
      models["pallas"] = process.model.clone(decode_attention="pallas")
    fns = {name: (lambda n=steps[name], c=name != "recompute", m=models[name]:
                  decode.raster_sample(m, params, key, y, num_steps=n, use_cache=c))
           for name in steps}
    if hf_peer.available():
      fns["hf"] = hf_peer.generate_fn(length, batch, vocab_size=vocab_size,
                                      num_classes=num_classes, width=width, depth=depth,
                                      heads=heads, seed=seed)
    t = interleaved(fns, REPEATS)
    rate = {name: batch * steps[name] / (t[name].median * length) for name in steps}
    out.append({"L": length, "batch": batch, "cache steps": steps["cache"],
                "recompute steps": steps["recompute"], "cache ms": t["cache"].ms(),
                "recompute ms": t["recompute"].ms(), "cache samples/s": rate["cache"],
                "recompute samples/s": rate["recompute"],
                "speedup": rate["cache"] / rate["recompute"]})
    if "hf" in t:  # both sample all L positions: a ratio of medians
      out[-1].update({"HF generate ms": t["hf"].ms(),
                      "cache vs HF generate": ratio(t, "hf", "cache")})
    if "pallas" in steps:  # decode attention over the filled prefix only
      out[-1].update({"pallas ms": t["pallas"].ms(),
                      "pallas / cache": rate["pallas"] / rate["cache"]})
  return out


def rows(quick: bool = False) -> list[dict]:
  return bench_kv_cache(seq_lens=(64,) if quick else (64, 784))
