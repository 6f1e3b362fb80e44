"""Classifier guidance against closed forms.

Two Gaussian classes in 2-D with a shared covariance S: at time u (ab = alpha_bar(u),
a = sqrt(ab)) class c is N(a m_c, C) with C = ab S + (1 - ab) I, so
  - the exact class eps is eps(x | c) = sqrt(1 - ab) C^-1 (x - a m_c),
  - the exact unconditional eps is sum_c p(c | x) eps(x | c),
  - the noisy class posterior is linear-discriminant: log p(c | x) = log pi_c
    - (x - a m_c)^T C^-1 (x - a m_c) / 2 + const, whose gradient is
    grad_x log p(y | x) = a C^-1 (m_y - sum_c p(c | x) m_c).
Bayes' rule then says eps(x | y) = eps(x) - sqrt(1 - ab) grad_x log p(y | x): classifier
guidance with w = 1 of the exact unconditional model by the exact classifier is the exact
conditional model, and sampling it with any solver lands in the class.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ardiff.models.noisy_classifier import NoisyClassifierNet
from ardiff.processes.gaussian import samplers
from ardiff.processes.gaussian.classifier_guidance import (
    ClassifierGuided, NoisyClassifier, class_log_prob_grad, classifier_cond,
    sample_unit_with_classifier, sample_with_classifier)
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.processes.gaussian.samplers import SAMPLERS
from ardiff.processes.gaussian.schedules import make_schedule

SCHEDULE = make_schedule("cosine", 1000)
MEANS = np.array([[-1.2, 0.6], [1.0, -0.4]])
S = np.array([[0.25, 0.08], [0.08, 0.15]])
WEIGHTS = np.array([0.3, 0.7])
NULL = 2  # the null label of the two-class model


def _noisy(u):
  """(ab [B], a [B, 1, 1], C^-1 [B, 1, 2, 2]) at times u (float32, the samplers' schedule);
  the 2x2 inverse written out (cheaper to compile than a linear solve)."""
  ab = SCHEDULE.alpha_bar_at(u)[:, None, None]
  cov = ab * jnp.asarray(S, jnp.float32) + (1 - ab) * jnp.eye(2)  # [B, 2, 2]
  det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] * cov[:, 1, 0]
  adj = jnp.stack([jnp.stack([cov[:, 1, 1], -cov[:, 0, 1]], -1),
                   jnp.stack([-cov[:, 1, 0], cov[:, 0, 0]], -1)], -2)
  return ab[:, 0, 0], jnp.sqrt(ab), (adj / det[:, None, None])[:, None]


def _class_residuals(x, u):
  """(x - a m_c) [B, 2 classes, 2] and C^-1 (x - a m_c)."""
  _, a, inv = _noisy(u)
  resid = x[:, None, :] - a * jnp.asarray(MEANS, jnp.float32)
  return resid, jnp.sum(inv * resid[..., None, :], -1)


def _class_logits(x, u):
  """log pi_c - (x - a m_c)^T C^-1 (x - a m_c) / 2 for c = 0, 1: [B, 2]."""
  resid, sol = _class_residuals(x, u)
  return jnp.log(jnp.asarray(WEIGHTS, jnp.float32)) - 0.5 * jnp.sum(resid * sol, -1)


def exact_classifier(params, x, u):
  del params
  return _class_logits(x, u)


def mixture_eps(params, x, u, y):
  """The exact eps of class y, or of the two-class mixture for the null label."""
  del params
  ab = SCHEDULE.alpha_bar_at(u)
  per_class = jnp.sqrt(1 - ab)[:, None, None] * _class_residuals(x, u)[1]  # [B, 2, 2]
  post = jax.nn.softmax(_class_logits(x, u), -1)[..., None]
  uncond = jnp.sum(post * per_class, axis=1)
  chosen = jnp.take_along_axis(per_class, jnp.minimum(y, 1)[:, None, None], axis=1)[:, 0]
  return jnp.where((y == NULL)[:, None], uncond, chosen)


def closed_form_grad(x, u, y):
  """a C^-1 (m_y - sum_c p(c | x) m_c) in float64 numpy."""
  x, u = np.asarray(x, np.float64), np.asarray(u)
  ab = np.asarray(SCHEDULE.alpha_bar_at(jnp.asarray(u)), np.float64)
  out = np.empty_like(x)
  for b in range(len(x)):
    a, cov = np.sqrt(ab[b]), ab[b] * S + (1 - ab[b]) * np.eye(2)
    inv = np.linalg.inv(cov)
    resid = x[b] - a * MEANS
    logits = np.log(WEIGHTS) - 0.5 * np.einsum("ci,ij,cj->c", resid, inv, resid)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    out[b] = a * inv @ (MEANS[y[b]] - p @ MEANS)
  return out


def _batch(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, 2)) * 1.5, jnp.float32)
  u = jnp.asarray(rng.uniform(0.02, 0.98, size=n), jnp.float32)
  y = jnp.asarray(rng.integers(0, 2, size=n), jnp.int32)
  return x, u, y


# ------------------------------------------------------------- (a) the formula and its sign


def linear_classifier(params, x, u):
  """A toy closed-form classifier: logits = x W + b (u unused); grad log p(y | x) =
  W[:, y] - sum_c p(c | x) W[:, c]."""
  del u
  return x @ params["W"] + params["b"]


def affine_eps(params, x, u, y):
  """Any base eps will do for the formula: a label- and time-dependent affine map."""
  return 0.5 * x + params["shift"] * (1.0 + y[:, None]) * u[:, None]


def test_model_function_is_eps_minus_w_sqrt_one_minus_ab_grad_log_p():
  x, u, y = _batch()
  rng = np.random.default_rng(1)
  W, b = rng.normal(size=(2, 3)), rng.normal(size=3)
  y3 = jnp.asarray(np.asarray(y) + np.arange(len(y)) % 2, jnp.int32)  # labels 0..2
  params = ({"shift": jnp.float32(0.3)}, {"W": jnp.asarray(W, jnp.float32),
                                          "b": jnp.asarray(b, jnp.float32)})
  fn = ClassifierGuided(affine_eps, linear_classifier, "cosine", 1000)
  assert hash(fn) == hash(ClassifierGuided(affine_eps, linear_classifier, "cosine", 1000))
  fn = jax.jit(fn)
  logits = np.asarray(x, np.float64) @ W + b
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  grad = W[:, np.asarray(y3)].T - p @ W.T  # [B, 2]
  root = np.sqrt(1 - np.asarray(SCHEDULE.alpha_bar_at(u), np.float64))[:, None]
  for w in (0.0, 0.5, 3.0):
    for conditional in (False, True):
      cond = classifier_cond(y3, w, 3, conditional_model=conditional)
      y_model = y3 if conditional else jnp.full_like(y3, 3)
      base = np.asarray(affine_eps(params[0], x, u, y_model), np.float64)
      got = np.asarray(fn(params, x, u, cond), np.float64)
      np.testing.assert_allclose(got, base - w * root * grad, rtol=1e-5, atol=1e-5)
      if w:  # the flipped sign is a different function
        assert np.abs(got - (base + w * root * grad)).max() > 1e-2


def test_positive_weight_moves_the_clean_estimate_towards_the_class():
  """x0 = (x - sqrt(1 - ab) eps) / sqrt(ab): guidance adds w (1 - ab) / sqrt(ab) grad log p,
  which points from the posterior-weighted mean towards m_y; a flipped sign points away."""
  x, u, y = _batch(seed=2)
  fn = jax.jit(ClassifierGuided(mixture_eps, exact_classifier, "cosine", 1000))
  ab = np.asarray(SCHEDULE.alpha_bar_at(u), np.float64)[:, None]

  def x0(w):
    eps = np.asarray(fn((None, None), x, u, classifier_cond(y, w, NULL)), np.float64)
    return (np.asarray(x, np.float64) - np.sqrt(1 - ab) * eps) / np.sqrt(ab)

  towards = MEANS[np.asarray(y)] - MEANS[1 - np.asarray(y)]
  # Where the posterior is already certain of y (p(y | x) = 1 in float32) the gradient is 0.
  moved = np.sum((x0(2.0) - x0(0.0)) * towards, -1)
  assert np.all(moved >= 0) and np.mean(moved > 1e-3) > 0.8, moved
  flipped = np.sum((x0(-2.0) - x0(0.0)) * towards, -1)
  assert np.all(flipped <= 0) and np.mean(flipped < -1e-3) > 0.8, flipped


# ------------------------------------------------------------- (b) the Bayes identity


def test_exact_classifier_gradient_matches_the_closed_form():
  x, u, y = _batch(seed=3)
  grad = jax.jit(class_log_prob_grad, static_argnums=0)
  got = np.asarray(grad(exact_classifier, None, x, u, y), np.float64)
  np.testing.assert_allclose(got, closed_form_grad(x, u, np.asarray(y)), rtol=1e-4, atol=1e-5)


def test_unit_weight_guidance_of_the_exact_unconditional_eps_is_the_exact_conditional_eps():
  x, u, y = _batch(seed=4)
  fn = ClassifierGuided(mixture_eps, exact_classifier, "cosine", 1000)
  guided = np.asarray(fn((None, None), x, u, classifier_cond(y, 1.0, NULL)), np.float64)
  exact = np.asarray(mixture_eps(None, x, u, y), np.float64)
  np.testing.assert_allclose(guided, exact, atol=1e-5)
  unguided = np.asarray(mixture_eps(None, x, u, jnp.full_like(y, NULL)), np.float64)
  assert np.abs(unguided - exact).max() > 0.1  # the check has something to check


# ------------------------------------------------------------- (c) every solver


N_PER_CLASS = 256
LABELS = jnp.asarray(np.repeat([0, 1], N_PER_CLASS), jnp.int32)
X_INIT = jax.random.normal(jax.random.key(0), (2 * N_PER_CLASS, 2))
MEAN_TOL = 0.12  # sampling error of a mean (std <= 0.5 / 16 = 0.03) + discretisation


def _class_means(x):
  x = np.asarray(x, np.float64)
  return np.stack([x[:N_PER_CLASS].mean(0), x[N_PER_CLASS:].mean(0)])


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_unit_weight_samples_land_in_their_class_with_every_solver(sampler):
  fn = ClassifierGuided(mixture_eps, exact_classifier, "cosine", 1000)
  x = samplers.sample(fn, (None, None), SCHEDULE, X_INIT, jax.random.key(1),
                      classifier_cond(LABELS, 1.0, NULL), sampler=sampler, num_steps=25)
  means = _class_means(x)
  assert np.all(np.isfinite(means))
  np.testing.assert_allclose(means, MEANS, atol=MEAN_TOL)


def test_flipped_guidance_does_not_land_in_the_class():
  fn = ClassifierGuided(mixture_eps, exact_classifier, "cosine", 1000)
  for w in (0.0, -1.0):  # the mixture, and the sign error
    x = samplers.sample(fn, (None, None), SCHEDULE, X_INIT, jax.random.key(1),
                        classifier_cond(LABELS, w, NULL), sampler="ddim", num_steps=25)
    assert np.abs(_class_means(x) - MEANS).max() > 4 * MEAN_TOL


# ------------------------------------------------------------- the GaussianDiffusion entry point


class _ExactMixtureNet(nn.Module):
  """A parameter-free 'network' returning the exact eps (GaussianDiffusion's model contract)."""

  @nn.compact
  def __call__(self, x, u, y, train=False):
    del train
    return mixture_eps(None, x, u, y)


def test_sample_with_classifier_on_a_gaussian_diffusion():
  process = GaussianDiffusion(_ExactMixtureNet(), num_classes=2, schedule_name="cosine",
                              num_timesteps=1000, data_shape=(2,))
  params = {}  # the exact 'network' has no parameters
  key = jax.random.key(5)
  x = sample_with_classifier(process, params, exact_classifier, None, key, LABELS, "ddim:25",
                             1.0)
  np.testing.assert_allclose(_class_means(x), MEANS, atol=MEAN_TOL)
  # w = 0 on the unconditional model draws what the process draws with the null label.
  x0 = sample_unit_with_classifier(process, params, exact_classifier, None, key, LABELS,
                                   "ddim:25", 0.0)
  plain = process.sample_unit(params, key, jnp.full_like(LABELS, NULL), "ddim:25")
  np.testing.assert_allclose(np.asarray(x0), np.asarray(plain), atol=1e-4)
  with pytest.raises(ValueError, match="class labels"):
    sample_with_classifier(process, params, exact_classifier, None, key,
                           jnp.full((4,), NULL, jnp.int32), "ddim:25", 1.0)


# ------------------------------------------------------------- the noise-aware classifier


def test_noisy_classifier_trains_on_the_forward_process_and_guides_images():
  net = NoisyClassifierNet(3, widths=(4, 8), feature_dim=8, time_dim=8)
  clf = NoisyClassifier(net, num_classes=3, schedule_name="cosine", num_timesteps=100)
  assert hash(clf) == hash(NoisyClassifier(net, 3, "cosine", 100))
  x0 = jax.random.uniform(jax.random.key(0), (6, 8, 8, 1), minval=-1, maxval=1)
  y = jnp.arange(6, dtype=jnp.int32) % 3
  # Random parameters of the right shapes without compiling flax's initialisers (slow on CPU).
  shapes = jax.eval_shape(clf.init_params, jax.random.key(1), {"x": x0, "y": y})
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype), shapes)
  u = jnp.linspace(0.1, 0.9, 6)

  @jax.jit
  def check(params):
    logits = clf(params, x0, u)
    loss, metrics = clf.loss(params, {"x": x0, "y": y}, jax.random.key(2))
    grads = class_log_prob_grad(clf, params, x0, u, y)
    # Example 2's gradient from its own log-probability alone (no coupling across the batch).
    one = jax.grad(lambda xb: jax.nn.log_softmax(clf(params, xb[None], u[2:3]))[0, y[2]])(x0[2])
    return logits, clf(params, x0, u[::-1]), loss, metrics, grads[2], one, \
        clf.noisy(x0, jnp.zeros(6, jnp.int32), jax.random.key(3))

  logits, flipped_u, loss, metrics, grad2, one, unnoised = check(params)
  assert logits.shape == (6, 3)
  assert np.abs(np.asarray(logits - flipped_u)).max() > 0  # the time matters
  assert np.isfinite(float(loss)) and 0 <= float(metrics["accuracy"]) <= 1
  np.testing.assert_allclose(np.asarray(grad2), np.asarray(one), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(unnoised), np.asarray(x0))
