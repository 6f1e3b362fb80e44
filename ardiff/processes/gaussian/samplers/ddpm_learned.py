"""DDPM ancestral sampling with a per-pixel learned variance (Nichol & Dhariwal, 2021), on any
time grid (respacing).

The model function returns two things, `eps_frac_fn(params, x, t [B], cond) -> (eps, frac)`:
the noise prediction and the interpolation fraction f (x's shape, or anything that broadcasts
to it; f = (v + 1) / 2 for a network output v). One step from time t to an earlier time s of
the sampling grid (real times in [0, 1]) treats (t, s) as one step of a *respaced* chain
(Nichol & Dhariwal, section 4):

    beta'   = 1 - ab_t / ab_s                           the respaced chain's beta
    beta~'  = (1 - ab_s) / (1 - ab_t) beta'             its posterior variance
    log Sigma = f log beta' + (1 - f) log beta~'
    x_s = mu(x_t, x0_hat) + sqrt(Sigma) z,

mu the posterior mean of q(x_s | x_t, x0) with x0 replaced by x0_hat (from eps), exactly the
`ddpm` solver's. With f = 0 this *is* the `ddpm` solver (Sigma = beta~', the same noise draws);
with f = 1 it is DDPM with the "large" variance beta' (Ho et al.'s sigma^2 = beta). As in the
`ddpm` solver the step is written in the scaled state x~ = x / sqrt(ab) = x0 + sigma eps, where
beta~' is sigma_s^2 (1 - r^2) ab_s with r = sigma_s / sigma_t, so only the ratio

    Sigma / beta~' = (beta' / beta~')^f = ((1 - ab_t) / (1 - ab_s))^f

is new; 1 - ab = sigma^2 / (1 + sigma^2) is taken from sigma (no float32 1 - ab near ab = 1).
The last step (s = 0, where beta~' = 0) returns x0_hat without noise, as DDPM does, so its
variance never matters for sampling (it does for the likelihood's decoder: see
`ardiff.processes.gaussian.learned_variance`).

Why not a registered solver: a solver sees the model only through `ctx.denoise` (eps and x0),
and every registered solver is run by the registry-wide tests (`test_solvers.py`,
`test_classifier_guidance.py`) with eps-only model functions, which have no variance to give.
So this loop sits beside the solver protocol: `LearnedVarianceDiffusion` accepts the spec
`ddpm_learned:N` (options `spacing`, `sigma_max`, the common ones, with the `ddpm` solver's
defaults), and any eps model can be sampled with a fixed variance through `FixedFraction`
(f = 1: fixed beta; f = 0: fixed beta~).

Caveat: a network trained on the T-step chain outputs one f per (x_t, t); on a respaced grid
the same f interpolates between the respaced endpoints, which is Nichol & Dhariwal's rule, not
the optimal variance of the respaced step (that depends on s too).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.processes import discrete
from ardiff.processes.gaussian.samplers.base import loop_grid, per_example_normal, sampling_times
from ardiff.processes.gaussian.schedules import Schedule
from ardiff.processes.guidance import combine, stream_inputs, stream_labels

# eps_frac_fn(params, x [B, ...], t float [B] in [0, 1], cond) -> (eps_hat, frac)
EpsFracFn = Callable[[Any, jax.Array, jax.Array, Any], tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class FixedFraction:
  """An eps-only model function with a constant fraction: frac = 1 is the fixed variance
  beta (Ho et al.'s "large"), frac = 0 the fixed posterior variance beta~ ("small").

  Frozen and hashable when `eps_fn` is (a method of a frozen process, a module-level function),
  so it can be the static model argument of the compiled loops.
  """

  eps_fn: Callable[..., jax.Array]
  frac: float

  def __call__(self, params, x, t, cond):
    return self.eps_fn(params, x, t, cond), jnp.full(x.shape, self.frac, x.dtype)


def respaced_variances(ab_t, ab_s):
  """(beta', beta~') of the respaced step t -> s from alpha_bar at t and s (any array type):
  beta' = 1 - ab_t / ab_s, beta~' = (1 - ab_s) / (1 - ab_t) beta' (the textbook forms)."""
  beta = 1.0 - ab_t / ab_s
  return beta, (1.0 - ab_s) / (1.0 - ab_t) * beta


def log_beta_ratio(sigma_t: jax.Array, sigma_s: jax.Array) -> jax.Array:
  """log(beta' / beta~') = log((1 - ab_t) / (1 - ab_s)) >= 0 from the noise-to-signal ratios
  (1 - ab = sigma^2 / (1 + sigma^2)); s must be > 0 (at s = 0 it is +inf)."""
  return (2.0 * jnp.log(sigma_t) - jnp.log1p(sigma_t**2)
          - 2.0 * jnp.log(sigma_s) + jnp.log1p(sigma_s**2))


def learned_step(x, eps, frac, sigma_t, sigma_s, z):
  """x_s from x_t for s > 0: the posterior mean with x0_hat plus sqrt(Sigma) z (module doc)."""
  sig_t = sigma_t.astype(x.dtype)
  x0 = x * jnp.sqrt(1.0 + sig_t**2) - sig_t * eps  # as ModelContext.denoise
  ratio2 = (sigma_s / sigma_t) ** 2
  scale = jnp.exp(0.5 * frac * log_beta_ratio(sigma_t, sigma_s))  # sqrt(Sigma / beta~')
  x_scaled = (x0 + ratio2 * (x * jnp.sqrt(1.0 + sigma_t**2).astype(x.dtype) - x0)
              + scale * sigma_s * jnp.sqrt(1.0 - ratio2) * z)
  return x_scaled * jax.lax.rsqrt(1.0 + sigma_s**2).astype(x.dtype)


def final_step(x, eps, sigma_t):
  """The step to s = 0: x0_hat = x sqrt(1 + sigma_t^2) - sigma_t eps, no noise."""
  sig_t = sigma_t.astype(x.dtype)
  return x * jnp.sqrt(1.0 + sig_t**2) - sig_t * eps


@functools.lru_cache(maxsize=None)  # same fn -> same guided fn, so jit caches hit
def guided(fn: EpsFracFn) -> EpsFracFn:
  """Classifier-free guidance of (eps, frac): eps = eps(neg) + w (eps(y) - eps(neg)) as in
  `ardiff.processes.guidance`; frac from the conditional stream (as GLIDE does)."""

  def guided_fn(params, x, t, cond):
    eps, frac = fn(params, stream_inputs(x), stream_inputs(t), stream_labels(cond))
    frac = jnp.broadcast_to(frac, eps.shape)
    return combine(eps, cond["w"]), jnp.split(frac, 2)[0]

  return guided_fn


def check_times(schedule: Schedule, num_steps: int, options: dict | None = None,
                times=None) -> np.ndarray:
  """The decreasing grid a run visits: `times` (ending at 0) if given, else the `ddpm`
  solver's grid for `num_steps` with the spec's `spacing` / `sigma_max` options."""
  options = dict(options or {})
  unknown = set(options) - {"spacing", "sigma_max"}
  if unknown:
    raise ValueError(f"sampler 'ddpm_learned' has no option(s) {sorted(unknown)}; its options: "
                     "sigma_max, spacing")
  if times is None:
    return sampling_times(schedule, "ddpm", num_steps, options)
  times = np.asarray(times, np.float64)
  if times.ndim != 1 or len(times) < 2 or times[-1] != 0 or not np.all(np.diff(times) < 0):
    raise ValueError("times must be a 1-D, strictly decreasing sequence ending at 0, got "
                     f"{times.tolist()}")
  return times


@functools.partial(jax.jit, static_argnames=("eps_frac_fn", "return_trajectory"))
def _sample(eps_frac_fn, params, schedule, x_init, key, cond, times, num_steps, *,
            return_trajectory):
  """The n steps over times[0..n]: a fori_loop with n = num_steps traced (times padded, one
  program for every n) or, with num_steps None, a scan over the exact grid (trajectory)."""
  batch = x_init.shape[0]
  keys = discrete.example_keys(key, batch)
  n = times.shape[0] - 1 if num_steps is None else num_steps

  def evaluate(x, t):
    eps, frac = eps_frac_fn(params, x, jnp.full((batch,), t), cond)
    return eps, jnp.broadcast_to(frac, x.shape).astype(x.dtype)

  def step(x, t, s, i):
    eps, frac = evaluate(x, t)
    z = per_example_normal(discrete.step_keys(keys, i), x)
    return learned_step(x, eps, frac, schedule.sigma_at(t), schedule.sigma_at(s), z)

  if num_steps is None:
    def body(x, inputs):
      x = step(x, *inputs)
      return x, (x if return_trajectory else None)

    x, traj = jax.lax.scan(body, x_init, (times[:n - 1], times[1:n], jnp.arange(n - 1)))
  else:
    x = jax.lax.fori_loop(0, n - 1, lambda i, x: step(x, times[i], times[i + 1], i), x_init)
  x = final_step(x, evaluate(x, times[n - 1])[0], schedule.sigma_at(times[n - 1]))
  if not return_trajectory:
    return x
  return x, (jnp.concatenate([traj, x[None]]) if n > 1 else x[None])


def sample(eps_frac_fn: EpsFracFn, params: Any, schedule: Schedule, x_init: jax.Array,
           key: jax.Array, cond: Any = None, *, num_steps: int = 50,
           return_trajectory: bool = False, times: Any = None, **options: Any):
  """DDPM with the learned variance from x_init (noise at t_max) to t = 0 in `num_steps`
  steps (one model call each); `options` are `spacing` and `sigma_max` (defaults: the `ddpm`
  solver's), `times` a custom decreasing grid ending at 0. key: one key or per-example keys
  [B] (the noise of step i for example b is drawn from fold_in(keys[b], i), as every solver
  does). Returns x_0, or (x_0, trajectory [num_steps, B, ...]). One program for every step
  count up to 1023 (the grid is padded, the count is data), except with the trajectory.
  """
  grid = check_times(schedule, num_steps, options, times)
  grid, n = loop_grid(grid, schedule.log_snrs.dtype, pad=not return_trajectory)
  return _sample(eps_frac_fn, params, schedule, x_init, key, cond, grid, n,
                 return_trajectory=return_trajectory)
