"""Gaussian diffusion with learned reverse variances (Nichol & Dhariwal, 2021, "improved DDPM").

The network outputs 2C channels for C data channels: the noise prediction eps_hat (the usual
`eps` target) and v. The reverse transition is p(x_{t-1} | x_t) = N(mu(x_t, x0_hat), Sigma_t)
with, per pixel,

    f = (v + 1) / 2,    log Sigma_t = f log beta_t + (1 - f) log beta~_t,
    beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t.

v is unconstrained, as in the paper: f outside [0, 1] extrapolates past the two endpoints
(the paper reports that it stays inside in practice; nothing here clips it).

Training (the paper's hybrid objective, with its uniform timesteps t ~ U{1..T}):

    L = L_simple + lambda L_vlb,   lambda = 0.001,
    L_simple = mean over pixels of (eps - eps_hat)^2 (the plain DDPM loss),
    L_vlb = T L_t  (one-sample estimate of sum_t L_t, bits per dimension),
    L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))  for t >= 2,
    L_1 = -log p(x0 | x1)  (the discretised Gaussian decoder of `likelihood.py`),

with eps_hat's gradient stopped inside L_vlb, so L_vlb trains only the variance and the mean
keeps the L_simple objective. The paper's importance-sampled L_vlb-only variant is not here.
The KL with the learned Sigma_t (t >= 2) and the decoder's variance Sigma_1 are the bound's,
written out in `likelihood.py` (one implementation for fixed and learned variances: a model
function that returns (eps_hat, f) gets the learned ones): `likelihood.bpd` and `nll_bound`
read `bound_model_fn`, which is `eps_frac_fn` here.

Sampling: every registered solver uses the eps half (`eps_fn`, inherited); the registered
solver `ddpm_learned:N` is handed (eps, f) (`model_fn`) and runs DDPM with the learned
variance on the respaced N-step grid (`samplers/ddpm_learned.py`). Images only (the decoder
needs grey levels); target `eps` only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.data.levels import unit_to_levels
from ardiff.processes.gaussian.likelihood import _flat_sum, decoder_nll, diffusion_kl
from ardiff.processes.gaussian.process import GaussianDiffusion
from ardiff.processes.gaussian.samplers import ddpm_learned
from ardiff.processes.gaussian.schedules import Schedule
from ardiff.processes.gaussian.targets import bcast
from ardiff.processes.guidance import Guidance
from ardiff.processes.spec import SampleSpec

LEARNED_SAMPLER = "ddpm_learned"
VLB_WEIGHT = 0.001  # lambda of the hybrid objective (Nichol & Dhariwal, section 3.1)


def fraction(v: jax.Array) -> jax.Array:
  """The network's variance output v -> the interpolation fraction f = (v + 1) / 2 (unclipped)."""
  return (v + 1.0) / 2.0


def split_output(out: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[..., 2C] network output -> (eps_hat [..., C], f [..., C])."""
  eps_hat, v = jnp.split(out, 2, axis=-1)
  return eps_hat, fraction(v)


def hybrid_loss(schedule: Schedule, out, x0, x_t, eps, t, num_levels: int,
                vlb_weight: float = VLB_WEIGHT) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_simple + vlb_weight * T * L_t (module doc) for a batch: out [B, ..., 2C] the network's
  output at (x_t, t), eps the noise that made x_t from x0 (floats at the level centres),
  t int [B] in 1..T. eps_hat's gradient is stopped inside the L_vlb part."""
  T = schedule.num_timesteps
  eps_hat, frac = split_output(out)
  simple = jnp.mean((eps - eps_hat) ** 2)
  frozen = jax.lax.stop_gradient(eps_hat)
  n = np.prod(x0.shape[1:])
  kl = _flat_sum(diffusion_kl(schedule, jnp.maximum(t, 2), eps, frozen, frac)) / n
  first = t == 1  # the decoder term; elsewhere fed x0 itself so that nothing overflows
  x1 = jnp.where(bcast(first, x_t), x_t, x0)
  rec = _flat_sum(decoder_nll(schedule, x1, jnp.where(bcast(first, x_t), frozen, 0.0), frac,
                              unit_to_levels(x0, num_levels), num_levels)) / n
  vlb_t = jnp.where(first, rec, kl) / np.log(2.0)  # bits per dimension
  vlb = T * jnp.mean(vlb_t)
  loss = simple + vlb_weight * vlb
  return loss, {"loss": loss, "l_simple": simple, "l_vlb": vlb}


@dataclasses.dataclass(frozen=True)
class LearnedVarianceDiffusion(GaussianDiffusion):
  """`GaussianDiffusion` whose network (UNet with out_channels = 2C) also predicts the
  variance; trained with the hybrid objective. `predict` / `eps_fn` return the eps half, so
  every registered solver, guidance, inpainting and `likelihood.bpd` work unchanged (with the
  fixed beta~ variance); `ddpm_learned:N` samples with the learned one, `bpd` bounds it."""

  vlb_weight: float = VLB_WEIGHT

  def __post_init__(self):
    super().__post_init__()
    if self.target != "eps":
      raise ValueError(f"learned variances are trained with the eps target (config key "
                       f"'diffusion.target'), got {self.target!r}")
    if self.num_levels is None:
      raise ValueError("learned variances need image data with grey levels (the decoder term "
                       "is a discretised Gaussian); config key 'dataset'")
    if not self.vlb_weight >= 0:
      raise ValueError(f"vlb_weight must be >= 0, got {self.vlb_weight}")
    channels = self.data_shape[-1] if self.data_shape else None
    out = getattr(self.model, "out_channels", None)
    if channels is not None and out != 2 * channels:
      raise ValueError(f"the network must output 2 x {channels} channels (eps and v), got "
                       f"out_channels={out!r}")

  def predict_full(self, params, x_t, u, y, train=False, rngs=None):
    """The network's whole output [..., 2C] at real times u [B]."""
    return self.model.apply(params, x_t, u.astype(jnp.float32), y, train=train, rngs=rngs)

  def predict(self, params, x_t, u, y, train=False, rngs=None):
    """The eps half [..., C] (what `GaussianDiffusion.eps_fn` and the solvers read)."""
    return split_output(self.predict_full(params, x_t, u, y, train, rngs))[0]

  def eps_frac_fn(self, params, x, u, y):
    """(eps_hat, f) at real times u [B] from one network call; eps_hat as `eps_fn` gives it
    (clip_x0 applied to the implied x0)."""
    eps, frac = split_output(self.predict_full(params, x, u, y))
    return self.clip_eps(eps, x, u), frac

  def loss(self, params, batch, key, train=True):
    """The hybrid objective (module doc); logs loss, l_simple and l_vlb (bits, T L_t)."""
    draw = self.training_draw(batch, key, train)
    out = self.predict_full(params, draw.x_t, draw.t / self.num_timesteps, draw.y, train=train,
                            rngs={"dropout": draw.dropout_key})
    return hybrid_loss(self.schedule, out, draw.x0, draw.x_t, draw.target, draw.t,
                       self.num_levels, self.vlb_weight)

  # ---------------------------------------------------------------- sampling

  def model_fn(self, spec: SampleSpec, guidance: Guidance | None = None):
    """`ddpm_learned` reads the learned fraction: (eps, f) from `eps_frac_fn`; every other
    solver gets the eps half (`GaussianDiffusion.model_fn`)."""
    if spec.name != LEARNED_SAMPLER:
      return super().model_fn(spec, guidance)
    return self.eps_frac_fn if guidance is None else ddpm_learned.guided(self.eps_frac_fn)

  @property
  def bound_model_fn(self):
    """The bound reads the learned fraction too (`GaussianDiffusion.nll_bound`)."""
    return self.eps_frac_fn
