"""Diffusion samplers. Adding one: a new file with a registered step, plus one import here."""

from ardiff.processes.gaussian.samplers.base import (SAMPLERS, register_sampler, sample,
                                           sample_python_loop, sampler_args)
from ardiff.processes.gaussian.samplers import ddim, ddpm  # noqa: F401  (registers the samplers)

__all__ = ["SAMPLERS", "register_sampler", "sample", "sample_python_loop", "sampler_args"]
