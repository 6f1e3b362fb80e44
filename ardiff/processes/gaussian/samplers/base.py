"""The solver protocol and the one loop that runs every diffusion sampler.

A solver moves the state x from time t to an earlier time s (real times in [0, 1]; 1 is pure
noise), calling the model as often as it needs:

    init(x_init) -> state                                   (pytree; () when stateless)
    step(ctx, state, x, t, s, key, args) -> (x_s, state)

`ctx` (a `ModelContext`) evaluates the model at any time: `ctx.denoise(x, t)` returns
`Denoised(x0, eps, frac)`, the network's noise prediction (guided, clipped, whatever the caller's
model function does), the clean-data estimate it implies and, from a model function that
returns (eps, frac), the learned variance's interpolation fraction (None otherwise; only
`ddpm_learned` reads it); `ctx.sigma(t)` is the schedule's
noise-to-signal ratio sigma = sqrt((1 - ab) / ab), and `ctx.final` is True (statically) for the
last step, the one that ends at t = 0 where sigma = 0 (Heun and the multistep solvers fall
back to first order there, as their papers do). `args` holds the solver's numeric options
(traced: a sweep over eta reuses one program); `key` holds per-example keys [B], fresh per
step: draw noise with `per_example_normal(key, x)` so that every example's randomness is its
own (samples then do not depend on the batch they were drawn in or on the number of devices).

Most solvers are simplest in the scaled state x~ = x / sqrt(ab) = x0 + sigma eps, where the
probability-flow ODE is dx~/dsigma = eps (Karras et al., 2022): `to_scaled` / `from_scaled`.

The loop runs the first n - 1 steps in one `lax.fori_loop` and the last (to t = 0) after it,
with an optional post-step hook (inpainting replaces the known pixels there). n is data: the
grid is padded to a bucket of 1024 times (`ardiff.processes.padded`), so `ddim:8` ... `ddim:1000`,
every spacing, sigma_max and option value share one compiled program per (model, solver,
batch shape, guidance on/off). Only the trajectory, whose shape is [n, B, ...], needs the static
scan over the exact grid (one program per n). The same loop serves sampling, trajectories,
inpainting and inversion (times increasing); the Python loop reference runs the same two
compiled step functions from Python. Each solver declares how many model calls a step makes
(`evals_per_step`, `final_evals`); the loop checks the declaration against the calls it traces
(the body once, the final step once), so `nfe` is exact.

Adding a solver: a new file in this package whose step is registered with `register_solver`,
and one import line in `samplers/__init__.py` (see docs/adding_a_sampler.md).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ardiff.processes import padded, randomness
from ardiff.processes.gaussian.samplers.spacing import SPACINGS, time_grid
from ardiff.processes.gaussian.schedules import Schedule
from ardiff.registry import Registry

# model_fn(params, x [B, ...], t float [B] in [0, 1], cond) -> eps_hat with x's shape, or
# (eps_hat, frac) with frac broadcastable to it (a learned variance: see ddpm_learned.py).
EpsFn = Callable[[Any, jax.Array, jax.Array, Any], "jax.Array | tuple[jax.Array, jax.Array]"]
StepFn = Callable[..., tuple[jax.Array, Any]]

DEFAULT_SIGMA_MAX = 80.0
# Options every solver takes; they choose the time grid on the host (static).
COMMON_OPTIONS = ("spacing", "sigma_max")


class Denoised(NamedTuple):
  x0: jax.Array  # the clean-data estimate implied by eps
  eps: jax.Array  # the model's noise prediction
  # The learned variance's fraction f (x's shape) when the model function returns one; None
  # for an eps-only model (`ddpm_learned` is then exactly `ddpm`).
  frac: jax.Array | None = None


class Solver(NamedTuple):
  step: StepFn
  init: Callable[[jax.Array], Any]
  options: dict[str, float]  # numeric options the step reads, with defaults (traced)
  spacing: str  # default time-step spacing
  evals_per_step: int  # model calls in a step that ends at s > 0
  final_evals: int  # model calls in the step that ends at s = 0
  invertible: bool  # deterministic and valid with s > t (see `inversion.py`)
  # Order of convergence to the probability-flow map with the default options (None: the
  # solver is stochastic); tests/processes/gaussian/test_solvers.py holds every solver to it.
  flow_order: int | None
  # Options that take only some values (e.g. UniPC's order in {1, 2, 3}): a spec giving another
  # is refused up front, since inside the compiled loop it would silently act as a neighbour.
  choices: dict[str, tuple[float, ...]] = {}


SAMPLERS: Registry[Solver] = Registry("diffusion sampler")


def _stateless(x):
  return ()


def register_solver(name: str, *, spacing: str = "uniform", init=_stateless,
                    evals_per_step: int = 1, final_evals: int = 1, invertible: bool = False,
                    flow_order: int | None = None,
                    choices: dict[str, tuple[float, ...]] | None = None, **options: float):
  """Register `step` under `name`; keyword options are its numeric options and defaults.
  `flow_order`: the order the deterministic solver converges at (None when stochastic);
  `choices`: the values an option may take, where not every number is one."""
  SPACINGS.get(spacing)

  def add(step: StepFn) -> StepFn:
    SAMPLERS.register(name)(Solver(step, init, dict(options), spacing, evals_per_step,
                                   final_evals, invertible, flow_order, dict(choices or {})))
    return step

  return add


def sampler_options(sampler: str) -> dict[str, Any]:
  """Every option of `sampler` with its default (the spec grammar's `name:steps:opt=val`)."""
  solver = SAMPLERS.get(sampler)
  return {**solver.options, "spacing": solver.spacing, "sigma_max": DEFAULT_SIGMA_MAX}


def sampler_args(sampler: str, **overrides: Any) -> dict[str, jax.Array]:
  """The solver's numeric options with defaults filled in; unknown options are an error."""
  solver = SAMPLERS.get(sampler)
  unknown = set(overrides) - set(sampler_options(sampler))
  if unknown:
    raise ValueError(f"sampler {sampler!r} has no option(s) {sorted(unknown)}; it takes "
                     f"{sorted(sampler_options(sampler))}")
  args = {}
  for k, v in solver.options.items():
    value = overrides.get(k, v)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
      raise ValueError(f"sampler {sampler!r}: option {k} must be a finite number, got {value!r}")
    allowed = solver.choices.get(k)
    if allowed is not None and value not in allowed:
      raise ValueError(f"sampler {sampler!r}: option {k} must be one of "
                       f"{', '.join(f'{a:g}' for a in allowed)}, got {value!r}")
    args[k] = jnp.asarray(value, jnp.float32)
  return args


def nfe(sampler: str, num_steps: int) -> int:
  """Model evaluations of a `num_steps` run that ends at t = 0 (per guidance stream)."""
  solver = SAMPLERS.get(sampler)
  return (num_steps - 1) * solver.evals_per_step + solver.final_evals


def steps_within(sampler: str, nfe_budget: int) -> int:
  """The most steps whose run costs at most `nfe_budget` evaluations (Heun at an even budget:
  one evaluation fewer); a budget below one step's cost is an error."""
  solver = SAMPLERS.get(sampler)
  if nfe_budget < solver.final_evals:
    raise ValueError(f"sampler {sampler!r}: no step count fits in {nfe_budget} evaluations")
  return (nfe_budget - solver.final_evals) // solver.evals_per_step + 1


def steps_for_nfe(sampler: str, nfe_budget: int) -> int:
  """The number of steps whose run costs exactly `nfe_budget` evaluations: the inverse of
  `nfe` (Heun: 2N - 1). A budget no step count reaches (Heun at an even NFE) is an error."""
  steps = steps_within(sampler, max(nfe_budget, SAMPLERS.get(sampler).final_evals))
  if nfe(sampler, steps) != nfe_budget:
    reachable = [nfe(sampler, n) for n in range(1, 5)]
    raise ValueError(f"sampler {sampler!r}: no step count costs {nfe_budget} evaluations "
                     f"(it spends {reachable}, ... for 1, 2, 3, 4 steps)")
  return steps


def sampling_times(schedule: Schedule, sampler: str, num_steps: int,
                   options: dict[str, Any] | None = None) -> np.ndarray:
  """The decreasing times a run visits, from the spec's `spacing` and `sigma_max`."""
  options = {**sampler_options(sampler), **(options or {})}
  sigma_max = options["sigma_max"]
  if isinstance(sigma_max, bool) or not isinstance(sigma_max, (int, float)):
    raise ValueError(f"sampler option sigma_max must be a number, got {sigma_max!r}")
  return time_grid(schedule, num_steps, options["spacing"], float(sigma_max))


class ModelContext:
  """What one solver step sees of the model (built afresh for every traced step).

  `final` is a Python bool; `num_steps` is an int32 scalar, traced in the compiled loop (the
  step count is data), so a step may compute with it but not branch on it in Python.
  """

  def __init__(self, model_fn: EpsFn, params, cond, schedule: Schedule, batch: int, *,
               final: bool, num_steps):
    self._model_fn, self._params, self._cond = model_fn, params, cond
    self.schedule, self.final, self.num_steps = schedule, final, num_steps
    self._batch = batch
    self.calls = 0  # model calls traced so far (checked against the solver's declaration)

  def sigma(self, t: jax.Array) -> jax.Array:
    return self.schedule.sigma_at(t)

  def alpha(self, t: jax.Array) -> jax.Array:
    """sqrt(alpha_bar(t)) = 1 / sqrt(1 + sigma^2)."""
    return jax.lax.rsqrt(1.0 + self.sigma(t) ** 2)

  def denoise(self, x: jax.Array, t: jax.Array) -> Denoised:
    self.calls += 1
    t = jnp.asarray(t, self.schedule.log_snrs.dtype)
    out = self._model_fn(self._params, x, jnp.full((self._batch,), t), self._cond)
    eps, frac = out if isinstance(out, tuple) else (out, None)
    if frac is not None:
      frac = jnp.broadcast_to(frac, x.shape).astype(x.dtype)
    sigma = self.sigma(t).astype(x.dtype)
    # x0 = (x - sqrt(1 - ab) eps) / sqrt(ab) = x sqrt(1 + sigma^2) - sigma eps
    return Denoised(x * jnp.sqrt(1.0 + sigma**2) - sigma * eps, eps, frac)

  def to_scaled(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """x~ = x / sqrt(ab(t)) = x0 + sigma(t) eps."""
    return x * jnp.sqrt(1.0 + self.sigma(t) ** 2).astype(x.dtype)

  def from_scaled(self, x_scaled: jax.Array, t: jax.Array) -> jax.Array:
    return x_scaled * self.alpha(t).astype(x_scaled.dtype)


def per_example_normal(keys: jax.Array, like: jax.Array) -> jax.Array:
  """Standard normal noise shaped like `like` [B, ...], example b drawn from keys[b]."""
  return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(keys)


def _no_hook(x, s, i, hook_args):
  return x


def _step_fn(model_fn, sampler, final, hook):
  """One step as a pure function (the loop body and the Python-loop reference share it)."""
  solver = SAMPLERS.get(sampler)

  def one_step(params, schedule, cond, args, hook_args, num_steps, x, state, t, s, i, keys):
    ctx = ModelContext(model_fn, params, cond, schedule, x.shape[0], final=final,
                       num_steps=num_steps)
    x, state = solver.step(ctx, state, x, t, s, randomness.step_keys(keys, i), args)
    expected = solver.final_evals if final else solver.evals_per_step
    if ctx.calls != expected:  # counted while tracing: once per compiled loop, whatever n
      raise AssertionError(f"solver {sampler!r} declares {expected} model call(s) per "
                           f"{'final ' if final else ''}step but made {ctx.calls}")
    return hook(x, s, i, hook_args), state

  return one_step


def run_loop(model_fn: EpsFn, params, schedule: Schedule, x_init, keys, cond, args, times,
             *, sampler: str, to_zero: bool, num_steps=None, hook=_no_hook, hook_args=None,
             return_trajectory: bool = False):
  """Traceable loop over the n steps times[0] -> times[1] -> ... -> times[n]; keys [B].

  `num_steps` None: n = len(times) - 1 is static and the steps run in one `lax.scan` (the
  only form that returns the trajectory [n, B, ...], whose shape is n). `num_steps` an int32
  scalar: n is data, `times` may be padded past n + 1 (`ardiff.processes.padded`) and the steps
  run in a `lax.fori_loop` with a traced trip count, so one program serves every n. With
  `to_zero`, the last step (ending at times[n] = 0) runs after the loop, traced once with
  ctx.final set. Returns x, or (x, trajectory) with the state after every step (after the hook).
  """
  static = num_steps is None
  n = times.shape[0] - 1 if static else jnp.asarray(num_steps, jnp.int32)
  if return_trajectory and not static:
    raise ValueError("return_trajectory needs the static loop (num_steps=None)")
  solver = SAMPLERS.get(sampler)
  body_step = _step_fn(model_fn, sampler, False, hook)
  consts = (params, schedule, cond, args, hook_args, jnp.asarray(n, jnp.int32))
  looped = n - 1 if to_zero else n  # steps that end at s > 0 (inverting: all of them)
  carry = (x_init, solver.init(x_init))
  traj = None
  if static:
    def scan_body(carry, inputs):
      t, s, i = inputs
      carry = body_step(*consts, *carry, t, s, i, keys)
      return carry, (carry[0] if return_trajectory else None)

    idx = jnp.arange(looped, dtype=jnp.int32)
    carry, traj = jax.lax.scan(scan_body, carry, (times[:looped], times[1:looped + 1], idx))
  else:
    def loop_body(i, carry):
      return body_step(*consts, *carry, times[i], times[i + 1], i, keys)

    carry = jax.lax.fori_loop(0, looped, loop_body, carry)
  x, state = carry
  if to_zero:
    final_step = _step_fn(model_fn, sampler, True, hook)
    last = n - 1
    x, _ = final_step(*consts, x, state, times[last], times[last + 1],
                      jnp.asarray(last, jnp.int32), keys)
    if return_trajectory:
      traj = jnp.concatenate([traj, x[None]]) if looped else x[None]
  return (x, traj) if return_trajectory else x


@functools.partial(jax.jit, static_argnames=("model_fn", "sampler", "return_trajectory"))
def _sample(model_fn, params, schedule, x_init, key, cond, args, times, num_steps, *, sampler,
            return_trajectory):
  keys = randomness.example_keys(key, x_init.shape[0])
  return run_loop(model_fn, params, schedule, x_init, keys, cond, args, times,
                  sampler=sampler, to_zero=True, num_steps=num_steps,
                  return_trajectory=return_trajectory)


def loop_grid(times: np.ndarray, dtype, pad: bool = True):
  """The grid and step count handed to the compiled loop: padded to its bucket with n as data
  (one program for every n up to the bucket), or exact with n static (`pad=False`)."""
  if not pad:
    return jnp.asarray(times, dtype), None
  return jnp.asarray(padded.pad_rows(times), dtype), jnp.int32(len(times) - 1)


def _times(schedule, sampler, num_steps, options, times):
  if times is not None:
    times = np.asarray(times, np.float64)
    if times.ndim != 1 or len(times) < 2 or times[-1] != 0 or not np.all(np.diff(times) < 0):
      raise ValueError("times must be a 1-D, strictly decreasing sequence ending at 0, got "
                       f"{times.tolist()}")
    return times
  return sampling_times(schedule, sampler, num_steps, options)


def sample(
    model_fn: EpsFn,
    params: Any,
    schedule: Schedule,
    x_init: jax.Array,
    key: jax.Array,
    cond: Any = None,
    *,
    sampler: str = "ddim",
    num_steps: int = 50,
    return_trajectory: bool = False,
    times: Any = None,
    pad: bool = True,
    **options: Any,
):
  """Run `sampler` from x_init (noise at t_max) to t = 0 in `num_steps` steps.

  `options` are the solver's (e.g. eta=0.5) and the common `spacing` and `sigma_max`;
  `times` (decreasing, ending at 0) replaces the spacing, e.g. to match a peer's grid.
  `model_fn` must be hashable and stable (a module-level function or a method of a frozen
  dataclass) because it is a static argument of the compiled loop. Returns x_0, or
  (x_0, trajectory [num_steps, B, ...]) when `return_trajectory` is set.

  One compiled program serves every step count up to 1023, spacing, sigma_max and option
  value (the grid is padded, the count is data). `pad=False`, and `return_trajectory`,
  compile one program per step count (the static scan; the benchmark's "before").
  """
  args = sampler_args(sampler, **options)  # validates name and options before tracing
  times = _times(schedule, sampler, num_steps, options, times)
  grid, n = loop_grid(times, schedule.log_snrs.dtype, pad and not return_trajectory)
  return _sample(model_fn, params, schedule, x_init, key, cond, args, grid, n,
                 sampler=sampler, return_trajectory=return_trajectory)


def sample_python_loop(model_fn, params, schedule, x_init, key, cond=None, *, sampler="ddim",
                       num_steps=50, times=None, **options):
  """Reference: the same steps as `sample`, each a separately compiled call from Python.

  Used by the benchmark (scan vs Python loop) and by the tests (both give the same x_0).
  """
  args = sampler_args(sampler, **options)
  times = jnp.asarray(_times(schedule, sampler, num_steps, options, times),
                      schedule.log_snrs.dtype)
  keys = randomness.example_keys(key, x_init.shape[0])
  n = times.shape[0] - 1
  x, state = x_init, SAMPLERS.get(sampler).init(x_init)
  for i in range(n):
    step = _jitted_step(model_fn, sampler, i == n - 1)
    x, state = step(params, schedule, cond, args, None, jnp.int32(n), x, state, times[i],
                    times[i + 1], jnp.int32(i), keys)
  return x


@functools.lru_cache(maxsize=None)
def _jitted_step(model_fn, sampler, final):
  return jax.jit(_step_fn(model_fn, sampler, final, _no_hook))
