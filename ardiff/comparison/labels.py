"""Each sampled spec's series in the figures: the family and the way it samples."""

from __future__ import annotations

SOLVERS = {"ddpm": "DDPM", "ddim": "DDIM", "heun": "Heun", "dpmpp_2m": "DPM-Solver++ 2M"}


def method(family, spec) -> str:
  """The figure's series a spec belongs to."""
  if family.kind == "raster":
    return "raster AR (1 pixel/step)"
  if spec.name == "confidence":
    noise = spec.get("noise", 0.0)
    return f"{family.label}, confidence decoding" + (f" (noise {noise:g})" if noise else "")
  if family.kind == "ardm":
    return f"ARDM, k {spec.get('order', 'random')} pixels/step"
  if family.kind == "upscale":
    return "upscale ARDM, k random pixels/step, 2 stages"
  if family.kind == "masked":
    resample = spec.get("resample", 0.0)
    return "masked diffusion, ancestral" + (f" + resampling {resample:g}" if resample else "")
  return f"{family.label} {SOLVERS.get(spec.name, spec.name)}"


def best_label(family) -> str:
  """The series of a Gaussian family's best solver at each NFE (`scoring.best_per_nfe`)."""
  return f"{family.label}, best solver at each NFE"
