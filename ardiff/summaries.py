"""TensorBoard event files beside `metrics.jsonl`: scalars, sample grids and the config.

    writer = Summaries(os.path.join(workdir, "tensorboard"), purge_step=start)
    writer.hparams({"learning_rate": 1e-3, ...})
    writer.scalars(step, {"loss": 0.31, "val/loss": 0.35})
    writer.images(step, "samples", uint8_images)        # [N, H, W] or [N, H, W, C]
    writer.close()

    tensorboard --logdir runs/ar_vs_diffusion           # one TensorBoard run per model dir

Written with tensorboardX (protobuf only, no TensorFlow). Only process 0 writes (every other
process gets a writer that does nothing), so a pod job has one set of event files. A bucket
logdir (gs://...): the events are written to a local temporary folder and each event file is
uploaded whole at every flush (at each checkpoint) and at the end (`ardiff.storage`).
`purge_step`: a resumed run starts a new event file whose first event tells TensorBoard to hide
the older files' events at steps >= the restored step (they were trained again), so curves do
not double back after a preemption.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Mapping

import numpy as np

from ardiff import storage
from ardiff.report.tiles import tile_images

SUBDIR = "tensorboard"


def image_grid(images: np.ndarray, vmax: float | None = None) -> np.ndarray:
  """uint8 [H', W', C]: `images` [N, H, W] or [N, H, W, C] tiled in a near-square grid, scaled
  so that `vmax` (default: the largest value) is white."""
  images = np.asarray(images, np.float32)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W] or [N, H, W, C], got shape {images.shape}")
  top = float(vmax) if vmax else float(images.max()) or 1.0
  grid = tile_images(images, math.ceil(math.sqrt(len(images))))
  return np.clip(np.round(grid / top * 255.0), 0, 255).astype(np.uint8)


def _hparam_value(value: Any):
  if isinstance(value, (bool, int, float, str)):
    return value
  return str(value)


class Summaries:
  """TensorBoard writer of one run (a no-op where `enabled` is False: non-chief processes)."""

  def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None,
               enabled: bool = True):
    self.logdir = os.fspath(logdir)
    self._writer = None
    self._staging = None  # the local folder of a bucket logdir's event files
    if enabled:
      from tensorboardX import SummaryWriter  # imported here: optional until a run writes

      local = self.logdir
      if storage.is_remote(self.logdir):
        self._staging = tempfile.TemporaryDirectory(prefix="ardiff-tensorboard-")
        local = self._staging.name
      # purge_step 0 would hide nothing anyway; None writes no purge event. tensorboardX names a
      # file by the second it opened and the host: a run resumed within the same second would
      # reopen (and truncate) the first start's file, so the start step is in the name too
      # (zero-padded: files of one second still sort by start).
      self._writer = SummaryWriter(local, purge_step=purge_step or None, flush_secs=30,
                                   filename_suffix=f".start{purge_step or 0:010d}")

  @property
  def enabled(self) -> bool:
    return self._writer is not None

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    if self._writer is None:
      return
    for tag, value in values.items():
      if value is not None and np.isfinite(value):
        self._writer.add_scalar(tag, float(value), int(step))

  def images(self, step: int, tag: str, images: np.ndarray, vmax: float | None = None) -> None:
    """A grid of `images` (levels or floats) as one image."""
    if self._writer is None:
      return
    self._writer.add_image(tag, image_grid(images, vmax), int(step), dataformats="HWC")

  def hparams(self, values: Mapping[str, Any]) -> None:
    """The run's settings, shown in TensorBoard's HParams tab and as a text table."""
    if self._writer is None:
      return
    from tensorboardX.summary import hparams

    plain = {k: _hparam_value(v) for k, v in values.items()}
    for summary in hparams(plain, {"loss": 0.0}):
      self._writer.file_writer.add_summary(summary)
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(plain.items()))
    self._writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()
      self._upload()

  def _upload(self) -> None:
    if self._staging is None:
      return
    for rel in storage.walk_files(self._staging.name):
      storage.write_atomic(storage.join(self.logdir, rel),
                           storage.read_bytes(os.path.join(self._staging.name, rel)))

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._upload()
      self._writer = None
    if self._staging is not None:
      self._staging.cleanup()
      self._staging = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
    return False
