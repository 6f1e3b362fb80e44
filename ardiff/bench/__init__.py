"""`ardiff bench samplers|ar|diffusion|train|all|memory|accelerator`: tables measured in one run.

Never timed tests: the numbers are printed, not asserted. Every bench times through the one
timer (`ardiff.bench.timer.interleaved`): each contender is called once untimed (compilation),
then the contenders run interleaved A, B, A, B, ... for REPEATS rounds, blocking on every
result; tables show median (min–max) milliseconds, and throughputs and ratios come from the
medians of the same run.

Modules: `samplers` (diffusion lax.scan vs Python loop), `ar` (KV cache vs recompute),
`diffusion` (UNet training and DDIM sampling on digits), `train` (training throughput at
MNIST size and at the digits configs, with XLA's FLOP count and the fraction of peak, on a CPU
of the peak measured in the same run); `all` runs these four. `memory` (XLA's memory analysis of
each family's train step with and without flash attention, and what fits which accelerator) and
`accelerator` (the acceptance run for a new GPU/TPU: kernels against XLA, decode, train step,
sampling). Each has TITLE and rows(quick) -> list of dicts; `--out` writes the markdown and the
rows as JSON beside it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any, Sequence

from ardiff.bench.timer import MIN_REPEATS

REPEATS = MIN_REPEATS  # timed rounds per contender in every bench

BENCHES = ("samplers", "ar", "diffusion", "train", "memory", "accelerator")
ALL = BENCHES[:4]  # the speed tables, run in this order by `all`


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
  """Every key of every row, in order of first appearance (a key that only later rows have,
  such as the sampling rows' images/s, still gets its column)."""
  out: list[str] = []
  for row in rows:
    out += [k for k in row if k not in out]
  return out


def table(rows: Sequence[dict[str, Any]]) -> str:
  from ardiff.report import markdown_table

  return markdown_table(rows, columns(rows)) if rows else markdown_table(rows)


def on_cpu() -> bool:
  import jax

  return jax.default_backend() == "cpu"


def header() -> str:
  import jax

  from ardiff.bench.train import peak_flops

  d = jax.devices()[0]
  lines = [f"Device: {jax.device_count()} x {d.device_kind} ({d.platform}), jax {jax.__version__}; "
           f"peak used: {peak_flops()[1]}.",
           f"Timer: one untimed warm-up call per contender, then {REPEATS} rounds interleaved "
           "A, B, A, B, ...; times are median (min–max) ms, throughputs and ratios use medians "
           "from the same run."]
  if on_cpu():
    lines.append("CPU: bfloat16 rows skipped (XLA:CPU emulates bf16 matmuls, so they would "
                 "time the emulation).")
  return "\n".join(lines) + "\n"


def run(what: str, quick: bool = False, out: str | None = None) -> str:
  """Run one bench (or `all`), print the markdown, also write it to `out`; returns it."""
  names = list(ALL) if what == "all" else [what]
  for name in names:
    if name not in BENCHES:
      raise SystemExit(f"ardiff bench: {name!r} is not available; choose from "
                       f"{list(BENCHES) + ['all']}")
  text, records = [header()], {}
  for name in names:
    module = importlib.import_module(f"ardiff.bench.{name}")
    print(f"running bench {name} ...", file=sys.stderr, flush=True)
    note = getattr(module, "NOTE", "")
    records[name] = module.rows(quick)
    text.append(f"## {module.TITLE}\n\n" + (f"{note}\n\n" if note else "")
                + table(records[name]))
    for title, extra_note, extra_rows in getattr(module, "extra_tables", lambda q: [])(quick):
      records[f"{name}: {title}"] = extra_rows
      text.append(f"## {title}\n\n{extra_note}\n\n" + table(extra_rows))
  result = "\n".join(text)
  print(result)
  if out:
    with open(out, "w") as f:
      f.write(result)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
      json.dump({"header": text[0], "quick": quick, "benches": records}, f, indent=1,
                default=str)
  return result
