"""The data interface shared by every process: arrays in memory plus a stateless batch order."""

from __future__ import annotations

import dataclasses

import numpy as np

from ardiff.data.checks import check_images, check_labels, check_num_levels, check_points, fail


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a process needs to know about its data, without the arrays (saved beside a trained
  model, so `ardiff sample` can rebuild the process)."""

  name: str
  kind: str  # "points" or "image"
  shape: tuple[int, ...]  # one example
  num_classes: int
  num_levels: int | None = None
  # Points: the training split's per-dimension mean and standard deviation, with which the
  # Gaussian process standardises its data (None for images, and in model cards written
  # before standardisation, which therefore keep their identity map).
  center: tuple[float, ...] | None = None
  scale: tuple[float, ...] | None = None

  @property
  def num_tokens(self) -> int:
    return int(np.prod(self.shape))

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "DataSpec":
    stats = {k: None if d.get(k) is None else tuple(float(v) for v in d[k])
             for k in ("center", "scale")}
    return cls(d["name"], d["kind"], tuple(d["shape"]), int(d["num_classes"]),
               None if d.get("num_levels") is None else int(d["num_levels"]), **stats)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A labelled dataset held in host memory.

  kind == "points": x is float32 [N, D] (e.g. the 2-D spiral).
  kind == "image":  x is uint8 [N, H, W, C] holding integer grey levels 0..num_levels-1.
  Labels are int32 [N] in 0..num_classes-1 (all zeros and num_classes == 1 when unlabelled).
  """

  name: str
  kind: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  num_levels: int | None = None

  def __post_init__(self):
    source = f"dataset {self.name!r}"
    if self.kind not in ("points", "image"):
      fail(source, f"kind must be 'points' or 'image', got {self.kind!r}")
    if (not isinstance(self.num_classes, (int, np.integer)) or isinstance(self.num_classes, bool)
        or self.num_classes < 1):
      fail(source, f"num_classes must be an integer >= 1, got {self.num_classes!r}")
    if self.kind == "image":
      check_num_levels(source, "num_levels", self.num_levels)
    shape = None
    for split in ("train", "test"):
      x, y = np.asarray(getattr(self, f"x_{split}")), np.asarray(getattr(self, f"y_{split}"))
      if self.kind == "image":
        check_images(source, f"x_{split}", x, self.num_levels)
      else:
        check_points(source, f"x_{split}", x)
      if split == "train" and not len(x):
        fail(source, "field 'x_train' has no examples")
      if shape is not None and x.shape[1:] != shape:
        fail(source, f"field 'x_{split}' holds examples of shape {x.shape[1:]}, x_train of "
                     f"shape {shape}")
      shape = x.shape[1:]
      check_labels(source, f"y_{split}", y, len(x), self.num_classes)

  @property
  def shape(self) -> tuple[int, ...]:
    """Shape of one example."""
    return tuple(self.x_train.shape[1:])

  @property
  def description(self) -> str:
    """One line for result notes, e.g. 'digits 8x8x1, 17 levels, split 1500/297'."""
    size = "x".join(str(d) for d in self.shape)
    levels = f", {self.num_levels} levels" if self.num_levels else ""
    return f"{self.name} {size}{levels}, split {len(self.x_train)}/{len(self.x_test)}"

  @property
  def num_tokens(self) -> int:
    """Number of scalar positions per example (pixels x channels for images)."""
    return int(np.prod(self.shape))

  @property
  def center(self) -> tuple[float, ...] | None:
    """Points: the training split's mean per dimension (None for images)."""
    if self.kind != "points":
      return None
    return tuple(float(v) for v in np.mean(self.x_train, axis=0, dtype=np.float64))

  @property
  def scale(self) -> tuple[float, ...] | None:
    """Points: the training split's standard deviation per dimension (1 where it is 0)."""
    if self.kind != "points":
      return None
    std = np.std(self.x_train, axis=0, dtype=np.float64)
    return tuple(float(v) if v > 0 else 1.0 for v in std)

  @property
  def spec(self) -> DataSpec:
    return DataSpec(self.name, self.kind, self.shape, self.num_classes, self.num_levels,
                    self.center, self.scale)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Indices of the examples in batch number `step`: a function of (seed, step) alone.

  Epoch e = step*batch_size // n uses the permutation drawn from (seed, e), so every example
  is seen once per epoch and a resumed run sees exactly the batches an uninterrupted run would.
  """
  if batch_size <= 0 or n <= 0:
    raise ValueError(f"batch_size and dataset size must be positive, got {batch_size}, {n}")
  start = step * batch_size
  positions = np.arange(start, start + batch_size)
  epochs, offsets = np.divmod(positions, n)
  out = np.empty(batch_size, dtype=np.int64)
  for epoch in np.unique(epochs):
    perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
    sel = epochs == epoch
    out[sel] = perm[offsets[sel]]
  return out
