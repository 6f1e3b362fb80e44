"""The one config error type and the checks that raise it, each naming the key."""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections

from ardiff.errors import ArdiffError


class ConfigError(ArdiffError, ValueError):
  """A bad config value; the message names the key."""


def require(condition: bool, key: str, message: str) -> None:
  """Validation helper: raise ConfigError naming `key` unless `condition`."""
  if not condition:
    raise ConfigError(f"config key {key!r}: {message}")


def require_positive(cfg: ml_collections.ConfigDict, prefix: str, *names: str) -> None:
  for name in names:
    value = cfg[name]
    require(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")


def require_choice(value: Any, key: str, choices: Iterable[str]) -> None:
  choices = list(choices)
  require(value in choices, key, f"unknown value {value!r}; choose from {', '.join(choices)}")
