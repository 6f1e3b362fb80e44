"""Configs as data: sections with defaults and validation (`sections`), command-line overrides
(`overrides`), and the one error type (`validation.ConfigError`) that the CLI turns into a
one-line message."""

from ardiff.configs.overrides import (apply_overrides, config_hash, get_experiment_config,
                                      load_experiment, to_json)
from ardiff.configs.validation import ConfigError, require, require_choice, require_positive

__all__ = ["ConfigError", "apply_overrides", "config_hash", "get_experiment_config",
           "load_experiment", "require", "require_choice", "require_positive", "to_json"]
