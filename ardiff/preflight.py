"""What `ardiff run` checks on this machine before it writes anything.

A config is validated on its own (`ardiff config` prints configs meant for other machines too);
what it asks of the machine that runs it is checked here, after validation and before the work
dir or its config.json is touched, each failure one line naming the key or the path:

  devices   every train section's batch splits evenly over this machine's devices and
            processes (`ardiff.parallel.check_batch_split`);
  folders   every model cache (`model_cache` keys, relative to the work dir) is a directory
            or can be made one: no file in the way;
  data      a tfds dataset (`dataset=mnist` or `cifar10`) is prepared where tfds looks.

The work dir itself is checked by making it and taking its lock (`ardiff.storage.makedirs`,
`ardiff.workdir`): whether a folder can be written is only known by writing.
"""

from __future__ import annotations

from typing import Iterator

import ml_collections

from ardiff import parallel, storage
from ardiff.configs.validation import ConfigError


def check_run(config: ml_collections.ConfigDict, workdir: str, *, devices: int,
              processes: int = 1) -> None:
  """Every check above for `config` run in `workdir` on `devices` devices (all processes')."""
  for prefix, section in sections(config):
    train = section.get("train")
    if isinstance(train, ml_collections.ConfigDict) and "batch_size" in train:
      parallel.check_batch_split(train.batch_size, devices, processes,
                                 train.get("grad_accum", 1), section=prefix + "train")
    if section.get("model_cache"):
      check_model_cache(prefix + "model_cache", section.model_cache, workdir)
    if section.get("dataset") in ("mnist", "cifar10"):
      from ardiff.data.tfds_source import check_prepared  # imports tfds: only when named

      check_prepared(section.dataset)


def sections(config: ml_collections.ConfigDict,
             prefix: str = "") -> Iterator[tuple[str, ml_collections.ConfigDict]]:
  """(key prefix, section) for the config and every section in it, e.g. ("spiral.", ...)."""
  yield prefix, config
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from sections(value, f"{prefix}{key}.")


def check_model_cache(key: str, value: str, workdir: str) -> None:
  """The model cache `value` (relative to `workdir` unless absolute) can be a directory."""
  root = storage.normpath(storage.join(workdir, value))
  blocker = storage.file_in_the_way(root)
  if blocker is not None:
    raise ConfigError(f"config key {key!r}: trained models would be kept in {root}, but "
                      f"{blocker} is a file, not a directory")
