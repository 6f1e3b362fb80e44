"""What experiments assemble their configs from: the scales and the image experiments' shared
sections (`sections`), the dataset a config names (`data`), and, for one import line, the model
sections the builders own (`ardiff.model_sections`).

Above `train` and `build` in the layers (tests/test_layers.py): it reads `TrainConfig`'s
defaults and the builders' sections; nothing in the library imports it.
"""

from ardiff.model_sections import (diffusion_section, oneshot_section, require_null_label,
                                   transformer_section, unet_section, validate_diffusion,
                                   validate_transformer, validate_unet_shape)
from ardiff.presets.data import (KINDS, check_dataset_keys, config_data_spec, config_dataset,
                                 data_kwargs, points_dataset)
from ardiff.presets.sections import (SCALES, image_config, train_section, validate_image_config,
                                     validate_train)

__all__ = ["KINDS", "SCALES", "check_dataset_keys", "config_data_spec", "config_dataset",
           "data_kwargs", "diffusion_section", "image_config", "oneshot_section", "points_dataset",
           "require_null_label", "train_section", "transformer_section", "unet_section",
           "validate_diffusion", "validate_image_config", "validate_train",
           "validate_transformer", "validate_unet_shape"]
