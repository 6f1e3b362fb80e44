"""One-shot regression learns the (blurry) conditional mean: checked against the closed form."""

import jax
import numpy as np
import pytest

from ardiff.models.label_mlp import LabelToImageMLP
from ardiff.processes.oneshot import OneShotRegression
from ardiff.train import TrainConfig, train


def _toy_binary_images(seed=0, num_classes=3, per_class=200, shape=(3, 3, 1)):
  """Crisp images (every pixel exactly -1 or +1); pixel p is +1 with a class-dependent rate."""
  rng = np.random.default_rng(seed)
  rates = rng.uniform(0.1, 0.9, size=(num_classes, *shape))
  y = np.repeat(np.arange(num_classes), per_class).astype(np.int32)
  x = np.where(rng.uniform(size=(len(y), *shape)) < rates[y], 1.0, -1.0).astype(np.float32)
  return x, y


def test_prediction_approaches_the_per_class_mean(tmp_path):
  x, y = _toy_binary_images()
  num_classes = 3
  model = LabelToImageMLP(num_classes, int(np.prod(x.shape[1:])), width=32, depth=1)
  process = OneShotRegression(model, x.shape[1:], p_uncond=0.3)
  cfg = TrainConfig(steps=400, batch_size=100, learning_rate=1e-2, warmup_steps=10,
                    ema_decay=0.0, log_every=400, checkpoint_every=400)
  state = train(process, x, y, cfg, tmp_path, log=lambda m: None)

  # Closed form of the MSE optimum, float64: E[x | y=c] per class, E[x] for the null label.
  x64 = x.astype(np.float64)
  class_means = np.stack([x64[y == c].mean(0) for c in range(num_classes)])
  data_mean = x64.mean(0)
  labels = np.arange(num_classes + 1)
  pred = np.asarray(process.predict(state.params, labels), np.float64)
  want = np.concatenate([class_means, data_mean[None]])
  err = np.abs(pred - want).max()
  assert err < 0.06, f"max |prediction - closed-form mean| = {err:.3f}"
  # The class means differ by far more than the tolerance, so the label was really used.
  assert np.abs(class_means[:, None] - class_means[None]).max() > 0.5

  # Blurry by construction: every training pixel is +-1, the prediction sits in between and
  # is far from every training image.
  assert np.mean(np.abs(pred) < 0.9) > 0.5
  dists = np.sqrt(((pred[:num_classes, None] - x64[None]) ** 2).sum(axis=(2, 3, 4)))
  assert dists.min() > 1.0

  # Deterministic: the same label always gives the same image, whatever the key; one NFE.
  draws = np.asarray(process.sample(state.params, jax.random.key(0), np.ones(5, int), "oneshot"))
  np.testing.assert_array_equal(draws, np.broadcast_to(draws[:1], draws.shape))
  null_draws = np.asarray(process.sample(state.params, jax.random.key(1), np.full(2, 3),
                                         "oneshot"))
  np.testing.assert_allclose(null_draws[0], pred[num_classes], atol=1e-6)
  assert process.nfe("oneshot") == 1
  with pytest.raises(ValueError, match="unknown sampler 'ddim'.*known: oneshot"):
    process.nfe("ddim:10")


def test_bad_arguments_raise():
  model = LabelToImageMLP(3, 4)
  with pytest.raises(ValueError, match="p_uncond"):
    OneShotRegression(model, (2, 2, 1), p_uncond=1.5)
  with pytest.raises(ValueError, match="shape"):
    OneShotRegression(model, (0, 2))
  with pytest.raises(ValueError, match="shape"):
    OneShotRegression(model, (3, 3, 1))  # 9 pixels, 4 outputs


@pytest.mark.parametrize("num_levels", [17, None], ids=["images", "floats"])
def test_sample_history_is_one_unrounded_step_ending_in_the_sample(num_levels):
  """float32 [1, B, *shape] in data space: the level scale (x + 1) / 2 (L - 1), unrounded, for
  images (rounded it is the sample); the prediction itself for floats."""
  process = OneShotRegression(LabelToImageMLP(3, 4, width=8, depth=1), (2, 2, 1),
                              num_levels=num_levels)
  params = process.init_params(jax.random.key(0), {"y": np.zeros(2, np.int32)})
  labels = np.array([0, 1, 3])
  history = process.sample_history(params, jax.random.key(1), labels, "oneshot")
  sample = np.asarray(process.sample(params, jax.random.key(1), labels, "oneshot"))
  assert history.shape == (1, 3, 2, 2, 1) and history.dtype == np.float32
  pred = np.asarray(process.predict(params, labels), np.float64)
  if num_levels is None:
    np.testing.assert_array_equal(history[-1], sample)
  else:
    np.testing.assert_allclose(history[-1], (pred + 1) / 2 * 16, rtol=1e-6, atol=1e-6)
    assert np.any(history[-1] != np.round(history[-1]))
    np.testing.assert_array_equal(np.round(history[-1]).astype(sample.dtype), sample)
