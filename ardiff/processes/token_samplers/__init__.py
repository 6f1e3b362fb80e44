"""Token samplers (`base.TokenSampler`). Adding one: a new file here that registers it, plus
one import line below; every process that provides what it requires takes it."""

from ardiff.processes.token_samplers.base import (TOKEN_SAMPLERS, TokenSampler, hidden_as_nan,
                                                  plan_history, register_sampler, samplers_for)
from ardiff.processes.token_samplers import raster  # noqa: F401  (each import registers one)
from ardiff.processes.token_samplers import ardm  # noqa: F401
from ardiff.processes.token_samplers import confidence  # noqa: F401
from ardiff.processes.token_samplers import masked  # noqa: F401
from ardiff.processes.token_samplers import upscale  # noqa: F401

__all__ = ["TOKEN_SAMPLERS", "TokenSampler", "hidden_as_nan", "plan_history",
           "register_sampler", "samplers_for"]
