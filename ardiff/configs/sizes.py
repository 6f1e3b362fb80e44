"""One size knob for every experiment: `get_config(size)`, on the command line `--config=SIZE`.

    @sized(scales=SCALES, smoke=["train.steps=4", ...], quick=quick_config)
    def get_config(scale: str = "small") -> ml_collections.ConfigDict: ...

Sizes, smallest first:
  smoke  seconds: what tests/test_experiments.py runs, so that CI catches a broken experiment;
  quick  a first look in minutes (only experiments that declare one);
  small  the default: models that train in minutes on a CPU (docs/results.md's numbers);
  paper  the larger models and longer training the figures are quoted at;
  mnist  the same on MNIST 28x28 (a GPU or TPU job).
small, paper and mnist are the scales the undecorated function builds (`scales`); smoke and
quick are small with a declared set of overrides on top: `key=value` strings as on the command
line (type-checked like them), or a function of the config. The size is recorded in
`config.size`, a top-level field: model keys hash the model and train sections only, so the
size never enters one, and a small model trained by a smoke-sized override set is the model any
other size with the same sections would train.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence, Union

import ml_collections

from ardiff.configs.validation import ConfigError

SIZES = ("smoke", "quick", "small", "paper", "mnist")

# A derived size: command-line overrides, or a function config -> config.
Derivation = Union[Sequence[str], Callable[[ml_collections.ConfigDict], ml_collections.ConfigDict]]


def sized(*, scales: Sequence[str] = ("small",), smoke: Derivation,
          quick: Derivation | None = None):
  """Decorate `get_config(scale)` (or a `get_config()` with one scale) into `get_config(size)`.

  The result has `.sizes` (those it accepts, in `SIZES` order) and `.derived` (size -> its
  derivation from small), so that a test can put the smoke overrides on another scale.
  """
  unknown = set(scales) - set(SIZES)
  if unknown:
    raise ValueError(f"scales {sorted(unknown)} are not sizes; sizes are {', '.join(SIZES)}")
  derived = {"smoke": smoke, **({"quick": quick} if quick is not None else {})}

  def wrap(fn):
    takes_scale = bool(inspect.signature(fn).parameters)
    accepted = tuple(s for s in SIZES if s in derived or s in scales)

    @functools.wraps(fn)
    def get_config(size: str = "small") -> ml_collections.ConfigDict:
      check_size(size, accepted)
      base = "small" if size in derived else size
      c = fn(base) if takes_scale else fn()
      if size in derived:
        c = derive(c, derived[size])
      c.size = size
      return c

    get_config.sizes = accepted
    get_config.derived = derived
    return get_config

  return wrap


def check_size(size: str, accepted: Sequence[str]) -> None:
  """One line naming the sizes an experiment takes (ConfigError: exit 2 on the command line)."""
  if size not in accepted:
    raise ConfigError(f"unknown size {size!r}; this experiment's sizes are "
                      f"{', '.join(accepted)} (--config=SIZE)")


def derive(c: ml_collections.ConfigDict, derivation: Derivation) -> ml_collections.ConfigDict:
  """`c` with a derived size's overrides applied (a copy; `c` is left as it was)."""
  from ardiff.configs.overrides import apply_overrides

  if callable(derivation):
    return derivation(ml_collections.ConfigDict(c.to_dict()))
  return apply_overrides(c, derivation)
