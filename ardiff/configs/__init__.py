"""Configs as data: command-line overrides (`overrides`), the checks every section uses
(`validation`), the one size knob (`sizes`: get_config(size), --config=SIZE) and the one
error type (`validation.ConfigError`) that the CLI turns into a one-line message. The sections
themselves (defaults and validation) live above the code that reads them:
`ardiff.model_sections` (the builders') and `ardiff.presets` (scales, train, data)."""

from ardiff.configs.overrides import (apply_overrides, config_hash, get_experiment_config,
                                      load_experiment, to_json)
from ardiff.configs.sizes import SIZES, sized
from ardiff.configs.validation import ConfigError, require, require_choice, require_positive

__all__ = ["ConfigError", "SIZES", "apply_overrides", "config_hash", "get_experiment_config",
           "load_experiment", "require", "require_choice", "require_positive", "sized", "to_json"]
