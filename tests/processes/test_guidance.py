"""One guidance rule for eps and logits: neg + w (cond - neg), one behaviour everywhere."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.processes import guidance
from ardiff.processes.guidance import Guidance, check_labels, make_guidance


def _toy(params, x, t, labels):
  """A label-dependent affine map (stands for an eps network or a logits network)."""
  return x * (1.0 + labels[:, None].astype(x.dtype)) + t[:, None]


def test_guided_combines_the_two_streams():
  x = jax.random.normal(jax.random.key(0), (5, 3))
  t = jnp.arange(5.0)
  y = jnp.array([0, 1, 2, 0, 1])
  fn = guidance.guided(_toy)
  for w, neg in ((0.0, None), (1.0, None), (2.5, None), (2.5, 1)):
    cond = guidance.guidance_cond(y, Guidance(w, neg), null_label=3)
    other = jnp.full_like(y, 3 if neg is None else neg)
    want = _toy(None, x, t, other) + w * (_toy(None, x, t, y) - _toy(None, x, t, other))
    np.testing.assert_allclose(fn(None, x, t, cond), want, rtol=1e-6)
  # w = 1: the conditional model itself; w = 0: the null (or negative) stream.
  one = fn(None, x, t, guidance.guidance_cond(y, Guidance(1.0), 3))
  np.testing.assert_allclose(one, _toy(None, x, t, y), rtol=1e-6)


def test_one_behaviour_for_a_negative_label_without_weight():
  with pytest.raises(ValueError, match="needs a guidance scale"):
    make_guidance(None, negative=2)
  assert make_guidance(None) is None
  assert make_guidance(2, negative=1) == Guidance(2.0, 1)


def test_labels_are_checked():
  np.testing.assert_array_equal(check_labels(np.array([0, 3]), 3, None), [0, 3])  # 3 = null
  with pytest.raises(ValueError, match="labels must lie in 0..3"):
    check_labels(np.array([0, 4]), 3, None)
  with pytest.raises(ValueError, match="labels must lie in 0..3"):
    check_labels(np.array([-1]), 3, None)
  with pytest.raises(ValueError, match="int"):
    check_labels(np.array([0.5]), 3, None)
  with pytest.raises(ValueError, match="negative label 3 must be a class id in 0..2"):
    check_labels(np.array([0]), 3, Guidance(2.0, negative=3))
