"""TensorBoard event files of a training run, read back by hand (TFRecord framing + the Event
protocol buffer), not through the writer that made them."""

from __future__ import annotations

import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2

from ardiff.summaries import Summaries, image_grid
from ardiff.train import learning_rate_schedule, train
from tests.train.helpers import tiny_setup


def read_events(logdir) -> list:
  """Every Event in the directory's event files, oldest file first. A TFRecord is: length
  (uint64 LE), its masked CRC (uint32), the payload, the payload's masked CRC (uint32)."""
  events = []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack_from("<Q", data, pos)
      payload = data[pos + 12:pos + 12 + length]
      pos += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(payload)
      events.append(event)
  return events


def scalars(events) -> dict[str, dict[int, float]]:
  out: dict[str, dict[int, float]] = {}
  for e in events:
    for v in e.summary.value:
      if v.HasField("simple_value"):
        out.setdefault(v.tag, {})[e.step] = v.simple_value
  return out


def test_image_grid_tiles_and_scales():
  images = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)  # [N=2, H=2, W=3]
  grid = image_grid(images, vmax=11.0)
  assert grid.shape == (2 + 2, 2 * (3 + 1) + 1, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1:3, 1:4, 0], np.round(images[0] / 11 * 255))
  np.testing.assert_array_equal(grid[1:3, 5:8, 0], np.round(images[1] / 11 * 255))
  assert grid[0].max() == 0 and grid[:, 4].max() == 0  # borders


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("tb")
  process, data, cfg = tiny_setup(steps=6, preview_every=3)
  previews = []

  def preview(params):
    previews.append(1)
    return np.tile(np.arange(4, dtype=np.uint8).reshape(4, 1, 1), (1, 2, 2))  # 4 images 2x2

  train(process, data.x_train, data.y_train, cfg, workdir, stop_at=4, log=lambda m: None,
        preview_fn=preview)
  train(process, data.x_train, data.y_train, cfg, workdir, log=lambda m: None,
        preview_fn=preview)
  return workdir, cfg, len(previews)


def test_scalars_match_metrics_jsonl_and_the_schedule(trained):
  workdir, cfg, _ = trained
  events = read_events(workdir / "tensorboard")
  got = scalars(events)
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
  for name in ("loss", "grad_norm", "steps_per_sec", "learning_rate"):
    assert name in got, sorted(got)
  for r in rows:
    assert got["loss"][r["step"]] == pytest.approx(r["loss"], rel=1e-6)
    assert got["grad_norm"][r["step"]] == pytest.approx(r["grad_norm"], rel=1e-6)
  # The rate of update n (step n + 1) is the schedule at count n: linear warm-up over 2 steps
  # to 1e-2, then cosine down to 1e-3 at step 6.
  schedule = learning_rate_schedule(cfg)
  for step in range(1, 7):
    assert got["learning_rate"][step] == pytest.approx(float(schedule(step - 1)), rel=1e-6)
  assert got["learning_rate"][2] == pytest.approx(0.5e-2, rel=1e-6)
  assert got["learning_rate"][3] == pytest.approx(1e-2, rel=1e-6)


def test_resume_purges_the_retrained_steps(trained):
  workdir, _, _ = trained
  files = sorted(glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*")))
  assert len(files) == 2  # one per start
  resumed = read_events(os.path.dirname(files[1]))
  starts = [e.step for e in resumed if e.HasField("session_log")
            and e.session_log.status == e.session_log.START]
  assert starts == [4]  # TensorBoard hides the first file's events at steps >= 4


def test_sample_grids_and_the_config_are_written(trained):
  workdir, cfg, calls = trained
  events = read_events(workdir / "tensorboard")
  images = {e.step: v.image for e in events for v in e.summary.value if v.HasField("image")}
  # preview_every=3: step 3, and the end of each call (4 with stop_at, then 6 = 2 x 3).
  assert sorted(images) == [3, 4, 6] and calls == 3
  png = np.asarray(Image.open(io.BytesIO(images[6].encoded_image_string)))
  expected = image_grid(np.tile(np.arange(4).reshape(4, 1, 1), (1, 2, 2)))
  np.testing.assert_array_equal(png.reshape(expected.shape[:2] + (-1,))[..., 0], expected[..., 0])
  assert png.max() == 255 and expected[1, 4, 0] == 85  # image 1 of levels 0..3 -> 255 / 3
  plugins = {v.metadata.plugin_data.plugin_name for e in events for v in e.summary.value}
  assert "hparams" in plugins
  texts = [v.tensor.string_val[0].decode() for e in events for v in e.summary.value
           if v.tag.startswith("config")]
  assert texts and f"| learning_rate | {cfg.learning_rate} |" in texts[0]


def test_a_disabled_writer_writes_nothing(tmp_path):
  with Summaries(tmp_path / "tb", enabled=False) as w:
    w.scalars(1, {"loss": 1.0})
    w.images(1, "samples", np.zeros((1, 2, 2)))
    w.hparams({"a": 1})
  assert not (tmp_path / "tb").exists()


def test_preview_sampler_draws_unconditional_levels_for_images_only():
  import jax

  from ardiff import build
  from ardiff.data.spiral import spiral_dataset
  from ardiff.model_cache import model_inputs, preview_sampler
  from tests.processes.test_contract import LEVELS, SHAPE, tiny_images

  data = tiny_images()
  section, extra, _ = build.BUILDERS.get("oneshot").example()
  process = build.build("oneshot", section, data, **extra)
  params = process.init_params(jax.random.key(0), {"x": model_inputs(process, data)[:2],
                                                   "y": data.y_train[:2]})
  draw = preview_sampler(process, "oneshot", data, num=6)
  images = np.asarray(draw(params))
  assert images.shape == (6, *SHAPE) and images.dtype == np.uint8 and images.max() < LEVELS
  np.testing.assert_array_equal(images, np.asarray(draw(params)))  # same key every call
  # Unconditional: the one-shot model's output for the null label, for every sample.
  null = np.asarray(process.sample(params, jax.random.key(0), np.full(6, process.num_classes),
                                   "oneshot"))
  np.testing.assert_array_equal(images, null)
  assert preview_sampler(process, "oneshot", spiral_dataset(num_train=8, num_test=4)) is None
