"""Diffusion samplers. Adding one: a new file with a registered step, plus one import here."""

from ardiff.processes.gaussian.samplers.base import (SAMPLERS, Denoised, ModelContext,
                                                     nfe, register_solver, sample,
                                                     sample_python_loop, sampler_args,
                                                     sampler_options, sampling_times,
                                                     steps_for_nfe, steps_within)
from ardiff.processes.gaussian.samplers import (ddim, ddpm, ddpm_learned,  # noqa: F401
                                                dpm_solver_pp, euler_ancestral,
                                                heun, unipc)  # (registers them)
from ardiff.processes.gaussian.samplers.inversion import invert

__all__ = ["SAMPLERS", "Denoised", "ModelContext", "invert", "nfe", "register_solver",
           "sample", "sample_python_loop", "sampler_args", "sampler_options", "sampling_times",
           "steps_for_nfe", "steps_within"]
