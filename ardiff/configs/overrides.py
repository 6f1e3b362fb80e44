"""Experiment configs from the command line: load an experiment file, apply
`--config.key=value` overrides with type checks, serialise and hash."""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.util
import json
import os
import sys
from types import ModuleType
from typing import Any, Iterable

import ml_collections

from ardiff.configs.sizes import SIZES, check_size
from ardiff.configs.validation import ConfigError
from ardiff.errors import ArdiffError


def load_experiment(path: str) -> ModuleType:
  """Import an experiment file (must define get_config() and run(config, workdir))."""
  if not os.path.exists(path):
    raise ConfigError(f"experiment file {path!r} not found")
  if not os.path.isfile(path) or not path.endswith(".py"):
    raise ConfigError(f"{path!r} is not an experiment file: give a .py file that defines "
                      "get_config() and run(config, workdir), e.g. experiments/spiral.py")
  name = "ardiff_experiment_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:  # the user's file: where it is wrong, not how Python compiles it
    del sys.modules[name]
    where = f", line {e.lineno}" if e.lineno else ""
    code = f" ({e.text.strip()})" if e.text and e.text.strip() else ""
    raise ConfigError(f"experiment file {path!r}{where}: {e.msg}{code}") from None
  for attr in ("get_config", "run"):
    if not callable(getattr(module, attr, None)):
      raise ConfigError(f"experiment file {path!r} must define {attr}(); it is not an "
                        "experiment (see experiments/spiral.py)")
  return module


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    full = f"{prefix}{k}"
    keys.append(full)
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_flat_keys(v, full + "."))
  return keys


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # a bare string such as ddim or cosine


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Iterable[str]) -> ml_collections.ConfigDict:
  """Apply `key.path=value` strings; unknown keys and wrong types raise ConfigError."""
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # a copy we may change
  known = _flat_keys(cfg)
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"config override {item!r} must look like key.path=value")
    key, text = item.split("=", 1)
    if key not in known:
      close = difflib.get_close_matches(key, known, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise ConfigError(f"unknown config key {key!r}{hint}")
    parent_path, _, leaf = key.rpartition(".")
    parent = cfg
    for part in filter(None, parent_path.split(".")):
      parent = parent[part]
    old = parent[leaf]
    if isinstance(old, ml_collections.ConfigDict):
      raise ConfigError(f"config key {key!r} is a section; set one of its fields instead")
    new = _coerce(key, old, _parse_value(text))
    parent[leaf] = new
  return cfg


def _coerce(key: str, old: Any, new: Any) -> Any:
  if old is None or new is None:
    return new
  if isinstance(new, bool) and not isinstance(old, bool):  # True is an int to Python, not here
    raise ConfigError(
        f"config key {key!r} expects {type(old).__name__}, got bool {new!r}")
  if isinstance(old, bool):
    if not isinstance(new, bool):
      raise ConfigError(f"config key {key!r} expects a bool (True/False), got {new!r}")
    return new
  if isinstance(old, float) and isinstance(new, int) and not isinstance(new, bool):
    return float(new)
  if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
    return type(old)(new)
  if not isinstance(new, type(old)):
    raise ConfigError(
        f"config key {key!r} expects {type(old).__name__}, got {type(new).__name__} {new!r}")
  return new


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def config_hash(*parts: Any) -> str:
  """A short stable hash of config sections, used to key cached trained models."""
  blob = json.dumps([p.to_dict() if isinstance(p, ml_collections.ConfigDict) else p
                     for p in parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:12]


def get_experiment_config(path: str, overrides: list[str], size: str | None = None):
  """The experiment module and its config with overrides applied and validated.

  The size (`ardiff.configs.sizes`: `size`, or an override `size=...`, or the older spelling
  `scale=...`) picks get_config(size) first, so that a size's defaults apply and explicit
  overrides still win. Every bad value raises ConfigError naming the key.
  """
  module = load_experiment(path)
  knob = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] in SIZE_KEYS]
  size = knob[-1] if knob else size
  for o in overrides:
    if o.split("=", 1)[0] == "quick":
      raise ConfigError(f"--config.{o} is now --config=quick (one size knob: "
                        f"{', '.join(SIZES)})")
  try:
    config = _sized_config(module, size)
  except ConfigError:
    raise
  except ValueError as e:  # a get_config that rejects its argument
    raise ConfigError(str(e)) from None
  config = apply_overrides(config, [o for o in overrides if o.split("=", 1)[0] not in SIZE_KEYS])
  if hasattr(module, "validate"):
    try:
      module.validate(config)
    except ArdiffError:
      raise
    except ValueError as e:  # a check that does not name its key still rejects the value
      raise ConfigError(f"{os.path.basename(path)}: invalid config: {e}") from None
  return module, config


# The size knob's spellings as overrides: --config=SIZE arrives as size=SIZE; scale= is the
# spelling before sizes.
SIZE_KEYS = ("size", "scale")


def _sized_config(module: ModuleType, size: str | None) -> ml_collections.ConfigDict:
  """get_config(size); an experiment that takes no size (a user's own file) takes "small"."""
  import inspect

  if size is None:
    return module.get_config()
  if inspect.signature(module.get_config).parameters:
    return module.get_config(size)
  check_size(size, ("small",))
  return module.get_config()
