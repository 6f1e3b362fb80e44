"""The sampling loop shared by every diffusion sampler.

A sampler is one function that moves x from timestep t to an earlier timestep s given the
network's noise prediction:

    step(schedule, x_t, t, s, eps_hat, key, args) -> x_s

where t, s are int32 scalars, `args` is a dict of traced options (e.g. {"eta": 0.0}), and
`key` holds per-example keys [B], fresh per step: draw noise with `per_example_normal(key, x)`
so that every example's randomness is its own (samples then do not depend on the batch they
were drawn in or on the number of devices). The loop below runs any registered step over strided timesteps in
one `lax.scan`, so each (sampler, num_steps) is one compiled program. To add a sampler, write
its step in a new file in this package and register it in `samplers/__init__.py`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ardiff.processes import discrete
from ardiff.processes.gaussian.schedules import Schedule, strided_timesteps
from ardiff.registry import Registry

# eps_fn(params, x [B, ...], t int32 [B], cond) -> eps_hat with x's shape.
EpsFn = Callable[[Any, jax.Array, jax.Array, Any], jax.Array]
StepFn = Callable[..., jax.Array]


class SamplerSpec(NamedTuple):
  step: StepFn
  defaults: dict[str, float]  # every option the step reads, with its default


SAMPLERS: Registry[SamplerSpec] = Registry("diffusion sampler")


def register_sampler(name: str, **defaults: float):
  def add(step: StepFn) -> StepFn:
    SAMPLERS.register(name)(SamplerSpec(step, defaults))
    return step

  return add


def sampler_args(sampler: str, **overrides: float) -> dict[str, jax.Array]:
  """The sampler's options with defaults filled in; unknown options are an error."""
  spec = SAMPLERS.get(sampler)
  unknown = set(overrides) - set(spec.defaults)
  if unknown:
    raise ValueError(
        f"sampler {sampler!r} has no option(s) {sorted(unknown)}; it takes {sorted(spec.defaults)}")
  return {k: jnp.asarray(overrides.get(k, v), jnp.float32) for k, v in spec.defaults.items()}


@functools.partial(
    jax.jit, static_argnames=("eps_fn", "sampler", "num_steps", "return_trajectory"))
def _sample(eps_fn, params, schedule, x_init, key, cond, args, *, sampler, num_steps,
            return_trajectory):
  step = SAMPLERS.get(sampler).step
  ts = jnp.asarray(strided_timesteps(schedule.num_timesteps, num_steps))
  batch = x_init.shape[0]

  keys = discrete.example_keys(key, batch)

  def body(x, inputs):
    t, s, i = inputs
    eps = eps_fn(params, x, jnp.full((batch,), t, jnp.int32), cond)
    x_next = step(schedule, x, t, s, eps, discrete.step_keys(keys, i), args)
    return x_next, (x_next if return_trajectory else None)

  x0, traj = jax.lax.scan(body, x_init, (ts[:-1], ts[1:], jnp.arange(num_steps)))
  return (x0, traj) if return_trajectory else x0


def sample(
    eps_fn: EpsFn,
    params: Any,
    schedule: Schedule,
    x_init: jax.Array,
    key: jax.Array,
    cond: Any = None,
    *,
    sampler: str = "ddim",
    num_steps: int = 50,
    return_trajectory: bool = False,
    **options: float,
):
  """Run `sampler` from x_init (noise at t=T) to t=0 in `num_steps` network evaluations.

  `eps_fn` must be hashable and stable (a module-level function or a method of a frozen
  dataclass) because it is a static argument of the compiled loop. Returns x_0, or
  (x_0, trajectory [num_steps, B, ...]) when `return_trajectory` is set.
  """
  args = sampler_args(sampler, **options)  # validates name and options before tracing
  strided_timesteps(schedule.num_timesteps, num_steps)  # validates num_steps
  return _sample(eps_fn, params, schedule, x_init, key, cond, args, sampler=sampler,
                 num_steps=num_steps, return_trajectory=return_trajectory)


def sample_python_loop(eps_fn, params, schedule, x_init, key, cond=None, *, sampler="ddim",
                       num_steps=50, **options):
  """Reference: the same steps as `sample`, each a separately jitted call from Python.

  Used by the benchmark (scan vs Python loop) and by the tests (both give the same x_0).
  """
  args = sampler_args(sampler, **options)
  step = SAMPLERS.get(sampler).step
  ts = strided_timesteps(schedule.num_timesteps, num_steps)
  keys = discrete.example_keys(key, x_init.shape[0])
  one_step = _jitted_step(eps_fn, step)
  x = x_init
  for i in range(num_steps):
    x = one_step(params, schedule, x, jnp.int32(ts[i]), jnp.int32(ts[i + 1]),
                 discrete.step_keys(keys, i), cond, args)
  return x


@functools.lru_cache(maxsize=None)
def _jitted_step(eps_fn, step):
  @jax.jit
  def one_step(params, schedule, x, t, s, key, cond, args):
    eps = eps_fn(params, x, jnp.full((x.shape[0],), t, jnp.int32), cond)
    return step(schedule, x, t, s, eps, key, args)

  return one_step


def per_example_normal(keys: jax.Array, like: jax.Array) -> jax.Array:
  """Standard normal noise shaped like `like` [B, ...], example b drawn from keys[b]."""
  return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(keys)
