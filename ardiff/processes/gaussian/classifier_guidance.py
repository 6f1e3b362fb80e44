"""Classifier guidance (Dhariwal & Nichol, 2021) with a noise-aware classifier, for every solver.

The maths, in the eps form the samplers use. The forward process is
x_t = sqrt(ab) x0 + sqrt(1 - ab) eps with ab = alpha_bar(u) at real time u in [0, 1], and a
network trained on it estimates eps(x_t, u) = E[eps | x_t] = -sqrt(1 - ab) grad_x log p_u(x_t)
(Tweedie). Bayes' rule, log p_u(x | y) = log p_u(x) + log p_u(y | x) - log p(y), with the
gradient in x of the last term zero, gives the conditional noise prediction exactly:

    eps(x | y) = eps(x) - sqrt(1 - ab(u)) grad_x log p_u(y | x)

where p_u(y | x_t) is the class posterior of the *noisy* data at time u, which a classifier
trained with cross-entropy on (x_t, u, y) estimates (`NoisyClassifier`). Classifier guidance
with weight w runs the samplers on

    eps_cg(x, u, y) = eps(x, u, y_model) - w sqrt(1 - ab(u)) grad_x log p(y | x, u)

i.e. the score of p_u(x) p_u(y | x)^w: w = 0 is the diffusion model alone, w = 1 the
conditional model by Bayes' rule (exact when both networks are), w > 1 sharpens the class
posterior (fewer, more typical samples per class; D&N's "classifier scale"). Sign convention:
eps points *away* from the data (x0 = (x - sqrt(1 - ab) eps) / sqrt(ab)), so the gradient is
*subtracted*; it moves the clean estimate x0 by + w (1 - ab) / sqrt(ab) grad log p(y | x),
towards the class.

Documented choice: y_model is the null label by default, i.e. classifier guidance of the
*unconditional* model (trained with label dropout for classifier-free guidance), the standard
comparison with classifier-free guidance: the class information then comes from the classifier
alone. `conditional_model=True` feeds the class to the diffusion model too (D&N also guide
conditional models; then w = 0 is the conditional model and w > 0 sharpens it further).

The guidance is a model function `ClassifierGuided(eps_fn, classifier, ...)`,
`(params, x, u, cond) -> eps`, with params = (diffusion params, classifier params) and
cond = {"y", "y_model", "w"} (`classifier_cond`): every registered solver calls the model only
through such a function, so every solver runs it, through `samplers.sample` or through
`sample_with_classifier` (the `GaussianDiffusion.sample` counterpart). w is traced (part of
cond), so a sweep over w reuses one compiled program. The base eps is whatever `eps_fn` returns
(for `GaussianDiffusion.eps_fn`, clipped to the data range when the process clips), and the
gradient term is added after it, as in D&N's `condition_score` (clip, then guide).

Cost per model call: one diffusion network evaluation plus one classifier forward and backward
pass (the NFE of `GaussianDiffusion.nfe(spec)` counts the diffusion network only). The
classifier must treat examples independently (no batch statistics): the per-example gradients
are taken through the sum of log-probabilities over the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ardiff import parallel
from ardiff.processes import randomness
from ardiff.processes.gaussian import samplers
from ardiff.processes.gaussian.samplers.base import per_example_normal
from ardiff.processes.gaussian.schedules import Schedule, make_schedule
from ardiff.processes.gaussian.targets import noisy_sample_and_target
from ardiff.processes.guidance import check_labels

# classifier(params, x [B, ...], u float [B] in [0, 1]) -> logits [B, num_classes]
ClassifierFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


def class_log_prob_grad(classifier: ClassifierFn, classifier_params, x: jax.Array, u: jax.Array,
                        y: jax.Array) -> jax.Array:
  """grad_x log p(y_b | x_b, u_b) for every example b (float32, x's shape); labels y [B]."""

  def total_log_prob(x):
    logits = classifier(classifier_params, x, u).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return jnp.sum(jnp.take_along_axis(log_probs, y[:, None].astype(jnp.int32), axis=-1))

  return jax.grad(total_log_prob)(x.astype(jnp.float32))


def classifier_cond(labels, scale, null_label: int, *, conditional_model: bool = False) -> dict:
  """The traced side of classifier guidance: {"y": class labels [B] for the classifier,
  "y_model": the diffusion model's labels [B] (the null label, or the classes with
  `conditional_model`), "w": the weight (float32 scalar)}."""
  labels = jnp.asarray(labels, jnp.int32)
  y_model = labels if conditional_model else jnp.full_like(labels, null_label)
  return {"y": labels, "y_model": y_model, "w": jnp.asarray(scale, jnp.float32)}


@dataclasses.dataclass(frozen=True)
class ClassifierGuided:
  """The samplers' model function for classifier guidance (see the module docstring):

      eps_cg = eps_fn(p_model, x, u, cond["y_model"])
               - cond["w"] sqrt(1 - ab(u)) grad_x log softmax(classifier(p_cls, x, u))[cond["y"]]

  called as fn((p_model, p_cls), x, u, cond). eps_fn and classifier must be hashable (module
  functions, or methods of frozen dataclasses such as `GaussianDiffusion.eps_fn` and
  `NoisyClassifier.__call__`), so this frozen dataclass is too: a static argument of the
  compiled sampling loop. The schedule is named (schedule_name, num_timesteps) rather than held,
  because a `Schedule` holds arrays and is not hashable; it must be the one eps_fn was trained
  with.
  """

  eps_fn: Callable
  classifier: ClassifierFn
  schedule_name: str = "cosine"
  num_timesteps: int = 1000

  def __post_init__(self):
    make_schedule(self.schedule_name, self.num_timesteps)  # validates name and T

  @classmethod
  def for_process(cls, process, classifier: ClassifierFn) -> "ClassifierGuided":
    """Guidance of a `GaussianDiffusion`'s eps (on its own schedule) by `classifier`."""
    return cls(process.eps_fn, classifier, process.schedule_name, process.num_timesteps)

  @property
  def schedule(self) -> Schedule:
    return make_schedule(self.schedule_name, self.num_timesteps)

  def __call__(self, params, x: jax.Array, u: jax.Array, cond: dict) -> jax.Array:
    model_params, classifier_params = params
    eps = self.eps_fn(model_params, x, u, cond["y_model"])
    grad = class_log_prob_grad(self.classifier, classifier_params, x, u, cond["y"])
    ab = self.schedule.alpha_bar_at(u)
    scale = (jnp.asarray(cond["w"], jnp.float32) * jnp.sqrt(1.0 - ab.astype(jnp.float32)))
    scale = scale.reshape(scale.shape + (1,) * (x.ndim - scale.ndim))
    return (eps.astype(jnp.float32) - scale * grad).astype(eps.dtype)


# ------------------------------------------------------------ sampling a GaussianDiffusion


def sample_unit_with_classifier(process, params, classifier: ClassifierFn, classifier_params,
                                key, labels, spec, scale: float, *,
                                conditional_model: bool = False, mesh=None) -> jax.Array:
  """Classifier-guided samples of `process` (a `GaussianDiffusion`) in its model space.

  labels: class ids [B] in 0..num_classes-1 (guidance needs a class; the null label is an
  error); spec: any sampling spec of the process ('ddim:50', 'dpmpp_2m:10', ...); scale: w.
  Draws exactly what `process.sample_unit(params, key, labels, spec)` draws (the same initial
  noise and per-step keys), only the model function differs: with w = 0 and the unconditional
  model the samples are `process.sample_unit(params, key, null labels, spec)`'s.
  """
  spec = process.parse(spec)
  labels = check_labels(labels, process.num_classes, None)
  if labels.size and int(labels.max()) >= process.num_classes:
    raise ValueError(f"classifier guidance needs class labels in 0..{process.num_classes - 1}, "
                     f"got the null label {process.num_classes}")
  if not process.data_shape:
    raise ValueError("GaussianDiffusion.data_shape is not set: give the shape of one example")
  model_fn = ClassifierGuided.for_process(process, classifier)
  w = jnp.asarray(scale, jnp.float32)  # traced: one program for the whole sweep

  def fn(both_params, keys, labels):
    x_init = per_example_normal(randomness.setup_keys(keys),
                                jnp.zeros((labels.shape[0], *process.data_shape)))
    cond = classifier_cond(labels, w, process.null_label, conditional_model=conditional_model)
    return samplers.sample(model_fn, both_params, process.schedule, x_init, keys, cond,
                           sampler=spec.name, num_steps=spec.steps, **spec.option_dict)

  keys = randomness.example_keys(key, labels.shape[0])
  return parallel.run_sharded(fn, (params, classifier_params), keys, labels, mesh)


def sample_with_classifier(process, params, classifier: ClassifierFn, classifier_params, key,
                           labels, spec, scale: float, *, conditional_model: bool = False,
                           mesh=None) -> jax.Array:
  """`sample_unit_with_classifier` in data space (levels for images), like `process.sample`."""
  return process.to_data(sample_unit_with_classifier(
      process, params, classifier, classifier_params, key, labels, spec, scale,
      conditional_model=conditional_model, mesh=mesh))


# ------------------------------------------------------------ the noise-aware classifier


@dataclasses.dataclass(frozen=True)
class NoisyClassifier:
  """Trains `net(x_t, u) -> logits` (e.g. `ardiff.models.noisy_classifier.NoisyClassifierNet`)
  to estimate p(y | x_t, u) on the diffusion's forward process: t ~ U{1..T},
  x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps, u = t / T, cross-entropy against y.

  x0 is in the diffusion's model space ([-1, 1] for images). Process-like for the training loop
  (`ardiff.train.train` needs `init_params` and `loss`); calling it,
  `classifier(params, x, u)`, returns the logits, the `ClassifierFn` of `ClassifierGuided`.
  Frozen, so hashable when `net` is (flax modules are).
  """

  net: nn.Module
  num_classes: int
  schedule_name: str = "cosine"
  num_timesteps: int = 1000

  def __post_init__(self):
    make_schedule(self.schedule_name, self.num_timesteps)

  @classmethod
  def for_process(cls, process, net: nn.Module) -> "NoisyClassifier":
    return cls(net, process.num_classes, process.schedule_name, process.num_timesteps)

  @property
  def schedule(self) -> Schedule:
    return make_schedule(self.schedule_name, self.num_timesteps)

  def __call__(self, params, x: jax.Array, u: jax.Array) -> jax.Array:
    return self.net.apply(params, x, jnp.asarray(u, jnp.float32))

  def init_params(self, key, batch):
    x = batch["x"][:1]  # jitted on one example, as `GaussianDiffusion.init_params`
    return jax.jit(self.net.init)(key, x, jnp.ones((1,), jnp.float32))

  def noisy(self, x0: jax.Array, t: jax.Array, key: jax.Array) -> jax.Array:
    """x_t ~ q(x_t | x0) at integer timesteps t [B] in 0..T."""
    return noisy_sample_and_target("eps", self.schedule, x0, t, key)[0]

  def loss(self, params, batch, key, train=True):
    del train
    x0, y = batch["x"], batch["y"]
    k_t, k_noise = jax.random.split(key)
    t = jax.random.randint(k_t, (x0.shape[0],), 1, self.num_timesteps + 1)
    logits = self(params, self.noisy(x0, t, k_noise), t / self.num_timesteps)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, {"loss": loss, "accuracy": accuracy}

  def accuracy(self, params, x0, y, u: float, key, batch_size: int = 1000) -> float:
    """Accuracy on (x0, y) noised to time u (the nearest grid step), in batches."""
    t = jnp.int32(round(float(u) * self.num_timesteps))  # traced: one program for every u
    correct = 0
    for i, s in enumerate(range(0, len(x0), batch_size)):
      correct += int(_count_correct(self, params, jnp.asarray(x0[s:s + batch_size]),
                                    jnp.asarray(y[s:s + batch_size]), t,
                                    jax.random.fold_in(key, i)))
    return correct / max(len(x0), 1)


@functools.partial(jax.jit, static_argnums=0)
def _count_correct(classifier: NoisyClassifier, params, x0, y, t, key):
  tt = jnp.full((x0.shape[0],), t, jnp.int32)
  logits = classifier(params, classifier.noisy(x0, tt, key), tt / classifier.num_timesteps)
  return jnp.sum(jnp.argmax(logits, -1) == y)


__all__ = ["ClassifierFn", "ClassifierGuided", "NoisyClassifier", "class_log_prob_grad",
           "classifier_cond", "sample_unit_with_classifier", "sample_with_classifier"]
