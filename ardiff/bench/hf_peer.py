"""Hugging Face ``generate`` as the KV-cache bench's peer (torch, CPU): the same job as our
cache sampler, done by the library most people would reach for.

The peer is a randomly initialised GPT-2 (learned positions, pre-LN, GELU MLP of ratio 4: the
same block as ours) with our width, depth and heads. Its vocabulary is the V token levels plus
one token per label (the null label included), and the prompt is the label's token, so like our
sampler it runs L one-token forwards through its KV cache for L sampled tokens (the prompt's
forward draws token 0). Plain sampling from the full softmax (``top_k=0``, temperature 1), every
position generated (``min_new_tokens = max_new_tokens = L``, no end token), under
``torch.no_grad()``. The label tokens can be drawn too (the head is V + labels wide); that is
11 extra logits of ~28, nothing the timing can see.

torch runs on one thread while it generates: at batch 64 and width 64 every op is a few
microseconds, and on the shared 2-core CPU of these sessions (load ~7, 2026-12-07) torch's
default two threads made ``generate`` 5-8x slower than one (L = 64: 1.1-1.9 s against 0.22 s;
L = 784: 55-117 s against 10-11 s), so one thread is the peer's better setting here.

Imported only when torch and transformers are both installed (`available`); without them the
bench has no peer column.
"""

from __future__ import annotations

import importlib.util
from typing import Callable


def available() -> bool:
  return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def generate_fn(length: int, batch: int, *, vocab_size: int, num_classes: int, width: int,
                depth: int, heads: int, seed: int = 0) -> Callable[[], object]:
  """A zero-argument callable that samples [batch, length] tokens with ``model.generate``."""
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.GPT2Config(
      vocab_size=vocab_size + num_classes + 1, n_positions=length + 1, n_embd=width,
      n_layer=depth, n_head=heads, bos_token_id=None, eos_token_id=None, pad_token_id=None)
  model = transformers.GPT2LMHeadModel(config).eval()
  labels = torch.arange(batch) % num_classes
  prompt = (vocab_size + labels)[:, None]  # one label token per example
  options = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, use_cache=True,
                 max_new_tokens=length, min_new_tokens=length,
                 pad_token_id=0)  # never written: no end token, so no sequence finishes early

  def run():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
      with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **options)
    finally:
      torch.set_num_threads(threads)
    if out.shape != (batch, length + 1):
      raise RuntimeError(f"HF generate returned {tuple(out.shape)}, expected "
                         f"{(batch, length + 1)}")
    return out

  return run
