"""`ardiff bench memory`: what one train step needs per device, with and without flash attention,
and which accelerators hold which per-device batch.

For each family and scale the real train step (``ardiff.train.train_step``: forward, backward,
optimiser, EMA) is compiled for one device on this host and XLA's memory analysis read:
arguments + outputs - aliased + temporaries. Transformer families are compiled twice: with the
XLA attention (the [B, N, T, T] maps materialised and kept for the backward pass) and with
``attention="chunked"``, which keeps only what the flash kernels keep (q, k, v, out and the
log-sum-exp; ``ardiff.kernels.attention``), so the difference is the maps' share. The flash
kernels themselves compile only on their device; the chunked path's transient [B, N, 128, T]
chunk is an upper bound on their tiles.

Fit: the state (arguments) is fixed, the temporaries are taken as proportional to the batch
(conservative: part of them is the optimiser's, which is not), and a per-device batch fits a
chip when it stays under 90% of its HBM (XLA and the runtime keep the rest). The table gives the
largest power-of-two per-device batch that fits (0: not even one example) and how many chips
the config's global batch needs for that.
"""

from __future__ import annotations

TITLE = "Memory of one train step per device (XLA's memory analysis), with and without flash"
NOTE = ("GiB = arguments + outputs - aliased + temporaries of the compiled step at the config's "
        "batch on one device. 'flash' rows are compiled with attention='chunked', which keeps "
        "what the flash kernels keep. Per accelerator: the largest power-of-two per-device "
        "batch under 90% of its HBM (and the chips the config's batch then needs).")

GIB = 2 ** 30
# HBM per JAX device (one TensorCore chip; an H100 SXM's 80 GB).
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "H100": 80e9 / GIB}
USABLE = 0.9


def step_memory(process, x, y, batch: int) -> dict:
  """XLA's memory analysis of the compiled train step at `batch` examples on one device."""
  from ardiff.bench.train import compile_train_step, compiled_memory

  return compiled_memory(compile_train_step(process, x, y, batch).compiled)


def largest_batch(memory: dict, batch: int, hbm_gib: float, cap: int = 4096) -> int:
  """The largest power-of-two per-device batch whose estimated memory fits `hbm_gib` (0: none):
  fixed + temp * b / batch <= USABLE * HBM."""
  budget = USABLE * hbm_gib * GIB - memory["fixed"]
  per_example = memory["temp"] / batch
  best, b = 0, 1
  while b <= cap and per_example * b <= budget:
    best, b = b, 2 * b
  return best


def fit_cells(memory: dict, batch: int) -> dict:
  """'b (n chips)' per accelerator: per-device batch b fits; the config's batch needs n."""
  cells = {}
  for name, hbm in HBM_GIB.items():
    b = largest_batch(memory, batch, hbm)
    cells[name] = "—" if b == 0 else f"{b} ({max(1, -(-batch // b))})"
  return cells


def _cases(quick: bool):
  """(scale, data spec, config) per scale measured."""
  from ardiff.presets import image_config
  from ardiff.data.base import DataSpec

  if quick:
    c = image_config("small", ar=True, diffusion=True)
    c.ar.update(width=32, depth=1)
    c.train.batch_size = 8
    return [("quick", DataSpec("digits", "image", (8, 8, 1), num_classes=10, num_levels=17), c)]
  return [("mnist", DataSpec("mnist", "image", (28, 28, 1), num_classes=10, num_levels=256),
           image_config("mnist", ar=True, diffusion=True)),
          ("paper", DataSpec("digits", "image", (8, 8, 1), num_classes=10, num_levels=17),
           image_config("paper", ar=True, diffusion=True))]


def rows(quick: bool = False) -> list[dict]:
  import numpy as np

  from ardiff import build
  from ardiff.data.levels import levels_to_unit, to_tokens

  out = []
  for scale, data, c in _cases(quick):
    batch = c.train.batch_size
    rng = np.random.default_rng(0)
    levels = rng.integers(0, data.num_levels, (batch,) + data.shape).astype(np.uint8)
    y = rng.integers(0, data.num_classes, batch).astype(np.int32)
    tokens, unit = to_tokens(levels), levels_to_unit(levels, data.num_levels)
    families = [("raster", c.ar, tokens, {}), ("ardm", c.ar, tokens, {}),
                ("gaussian_transformer", c.ar, unit, {"diffusion": c.diffusion}),
                ("gaussian", c.unet, unit, {"diffusion": c.diffusion})]
    if quick:  # one family, both attentions: the machinery, not the numbers
      families = families[:1]
    for kind, section, x, extra in families:
      impls = ("xla",) if kind == "gaussian" else ("xla", "chunked")
      xla_total = None
      for impl in impls:
        cfg = section.copy_and_resolve_references()
        if kind != "gaussian":
          cfg.attention = impl
        process = build.build(kind, cfg, data, c.dtype, **extra)
        memory = step_memory(process, x, y, batch)
        xla_total = xla_total or memory["total"]
        out.append({"scale": scale, "family": kind,
                    "attention": "—" if kind == "gaussian" else
                    ("xla" if impl == "xla" else "flash"),
                    "dtype": c.dtype, "batch": batch, "GiB": memory["total"] / GIB,
                    "maps' share": ("" if impl == "xla" else
                                    f"{1 - memory['total'] / xla_total:.0%}"),
                    **fit_cells(memory, batch)})
  return out
