"""Cross-check of the diffusion solvers against a peer: the `diffusers` library's schedulers.

Both sides run the same schedule and the same closed-form eps (x0 ~ N(mu, Sigma) in 2-D, Sigma
not diagonal, so E[eps | x_t] = sqrt(1 - ab) (ab Sigma + (1 - ab) I)^-1 (x - sqrt(ab) mu)) in
float64, on the same time grid, and must give the same trajectory to 1e-5 (max abs difference
over every state after every step).

Conventions (each checked by an assertion below):
  * timesteps: this project's k = 1..T is diffusers' 0-based k - 1, so diffusers'
    alphas_cumprod[j] is `schedule.alpha_bars[j + 1]`; a diffusers timestep tau (also a
    continuous one, as Heun passes) is the real time u = (tau + 1) / T here. Heun's continuous
    timesteps interpolate linearly in log sigma, as `schedule.sigma_at` interpolates log-SNR.
  * schedules: "cosine" is diffusers' "squaredcos_cap_v2", "linear" is "linear" with
    beta_start = 1e-4, beta_end = 0.02 (checked against diffusers' own float32 arrays).
  * precision: diffusers builds betas, alphas_cumprod and its sigma grids in float32. For the
    float64 comparison the schedulers get the project's float64 alphas_cumprod, and their sigma
    grids are recomputed in float64 with their own formulas (each checked against diffusers'
    float32 grid). DPMSolverMultistep's and EulerAncestral's `step` also cast the sample to
    float32 ("upcast"): that costs ~1e-6 for DPM-Solver, and 2e-4 for Euler ancestral on the
    cosine schedule, whose scaled state starts at |x~| ~ sigma_max = 2e4. The `float64_step`
    cases run diffusers' own step with that cast made a float64 one (`_float64_steps`), and
    then DPM-Solver agrees to 1e-7 (measured: 4e-13 cosine, 3e-15 linear, since this project's
    DPM-Solver keeps its log-sigma history in the state's precision; it kept float32 until this
    comparison found the 1e-8 it cost).
  * state: DDIM and DPM-Solver work in the VP state x, as this project does; Heun and Euler
    ancestral work in x~ = x / sqrt(ab) (model input scaled by 1 / sqrt(sigma^2 + 1)), which is
    converted back before comparing.
  * noise: the stochastic solvers (DDIM eta = 1, Euler ancestral) get this project's own noise
    draws (fold_in(example key, step), standard normal per example), handed to diffusers through
    `variance_noise` (DDIM) or in place of its `randn_tensor` (Euler ancestral).

Run: `pip install -e '.[peers]'` then `python -m pytest tests/peers -m peers -q` (add `-s` to
see the measured differences). Without diffusers or torch the tests skip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

from ardiff.processes import randomness  # noqa: E402
from ardiff.processes.gaussian import samplers  # noqa: E402
from ardiff.processes.gaussian.samplers.base import ModelContext, per_example_normal  # noqa: E402
from ardiff.processes.gaussian.schedules import make_schedule  # noqa: E402
from tests._float64 import float64  # noqa: E402

pytestmark = [
    pytest.mark.peers,
    # diffusers' set_timesteps calls np.array on a torch tensor (numpy 2's copy keyword).
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

T = 1000
TOL = 1e-5
STRICT_TOL = 1e-7  # DPM-Solver with diffusers' float32 cast of the sample made float64
BATCH = 64
MU = np.array([0.8, -0.4])
COV = np.array([[1.0, 0.6], [0.6, 0.5]])
DIFFUSERS_SCHEDULE = {
    "cosine": dict(beta_schedule="squaredcos_cap_v2"),
    "linear": dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
}


@pytest.fixture(scope="module", autouse=True)
def _x64():
  with float64():
    yield


def _schedule(name):
  return make_schedule(name, T, dtype=jnp.float64)


def gaussian_eps(params, x, u, cond):
  """Exact E[eps | x_u] for x0 ~ N(mu, Sigma) at real times u [B], ab from the project's
  schedule (`alpha_bar_at`, log-SNR interpolation between grid points)."""
  ab = params["schedule"].alpha_bar_at(u)[:, None, None]
  cov_t = ab * params["cov"] + (1.0 - ab) * jnp.eye(2)
  resid = x - jnp.sqrt(ab[:, :, 0]) * params["mu"]
  return jnp.sqrt(1.0 - ab[:, :, 0]) * jnp.linalg.solve(cov_t, resid[..., None])[..., 0]


_gaussian_eps_jit = jax.jit(gaussian_eps)


def _params(schedule):
  return {"mu": jnp.asarray(MU), "cov": jnp.asarray(COV), "schedule": schedule}


def _x_init(seed=0):
  return np.random.default_rng(seed).standard_normal((BATCH, 2))


def _peer_eps(params):
  """diffusers' side of the model: eps at a diffusers timestep tau, i.e. at u = (tau + 1) / T."""

  def eps(x, tau):
    u = np.full((x.shape[0],), (float(tau) + 1.0) / T)
    out = _gaussian_eps_jit(params, jnp.asarray(x.numpy()), jnp.asarray(u), None)
    return torch.from_numpy(np.array(out, np.float64))

  return eps


def _project_noise(key, step, like):
  """The standard normal draws of this project's sampler at `step` (per-example keys)."""
  keys = randomness.step_keys(randomness.example_keys(key, like.shape[0]), jnp.int32(step))
  return np.array(per_example_normal(keys, jnp.asarray(like)), np.float64)


def _project(schedule, sampler, times, x_init, key=None, **options):
  key = jax.random.key(0) if key is None else key
  _, traj = samplers.sample(gaussian_eps, _params(schedule), schedule, jnp.asarray(x_init), key,
                            sampler=sampler, num_steps=len(times) - 1, times=np.asarray(times),
                            return_trajectory=True, **options)
  return np.asarray(traj, np.float64)


def _full_sigmas(schedule):
  """Training-grid sigmas, diffusers' 0-based indexing (sigma of alphas_cumprod[j])."""
  ab = np.asarray(schedule.alpha_bars[1:], np.float64)
  return np.sqrt((1.0 - ab) / ab)


def _use_float64_schedule(sched, schedule):
  """Give a diffusers scheduler this project's float64 alphas_cumprod (diffusers' are float32;
  `test_schedules_match_diffusers` checks that they agree to float32 precision)."""
  ab = torch.from_numpy(np.array(schedule.alpha_bars[1:], np.float64))
  sched.alphas_cumprod = ab
  if hasattr(sched, "lambda_t"):  # DPM-Solver keeps alpha, sigma and lambda too
    sched.alpha_t, sched.sigma_t = torch.sqrt(ab), torch.sqrt(1.0 - ab)
    sched.lambda_t = torch.log(sched.alpha_t) - torch.log(sched.sigma_t)


class _Float64Torch:
  """`torch` as one diffusers module sees it, with torch.float32 read as torch.float64: its
  step() casts the sample to float32, which rounds a float64 run (nothing else changes)."""

  def __getattr__(self, name):
    return torch.float64 if name == "float32" else getattr(torch, name)


def _float64_steps(monkeypatch, module):
  monkeypatch.setattr(module, "torch", _Float64Torch())


def _max_diff(name, a, b):
  assert a.shape == b.shape, (name, a.shape, b.shape)
  diff = float(np.max(np.abs(a - b)))
  print(f"\n[peers] {name}: max |diff| = {diff:.3e}")
  return diff


def _peer_vp_trajectory(peer, params, x_init):
  """The states after every step of a diffusers scheduler that works in the VP state x (as
  this project does), float64."""
  eps_fn = _peer_eps(params)
  x = torch.from_numpy(x_init)
  traj = []
  for tau in peer.timesteps:
    x = peer.step(eps_fn(x, tau), tau, x).prev_sample
    traj.append(x.numpy())
  traj = np.stack(traj)
  assert traj.dtype == np.float64
  return traj


# --- the shared schedule ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cosine", "linear"])
def test_schedules_match_diffusers(name):
  schedule = _schedule(name)
  peer = diffusers.DDIMScheduler(num_train_timesteps=T, **DIFFUSERS_SCHEDULE[name])
  # diffusers computes betas in float32 (one rounding) and their cumulative product in float32
  # (1000 roundings, 1.3e-5 relative at cosine's tail where ab = 2.4e-9).
  np.testing.assert_allclose(peer.betas.double().numpy(), np.asarray(schedule.betas[1:]),
                             rtol=2e-7)
  np.testing.assert_allclose(peer.alphas_cumprod.double().numpy(),
                             np.asarray(schedule.alpha_bars[1:]), rtol=5e-5)
  # The model's ab at u = (tau + 1) / T is diffusers' alphas_cumprod[tau] on the grid.
  taus = np.arange(T)
  ab_model = np.asarray(schedule.alpha_bar_at(jnp.asarray((taus + 1.0) / T)))
  np.testing.assert_allclose(ab_model, np.asarray(schedule.alpha_bars[1:]), rtol=1e-13)
  np.testing.assert_allclose(ab_model, peer.alphas_cumprod.double().numpy(), rtol=5e-5)


# --- DDIM ---------------------------------------------------------------------------------


def _trailing_times(timesteps):
  """diffusers' 0-based timesteps (decreasing) as this project's real times, then t = 0."""
  return np.concatenate([(np.asarray(timesteps, np.float64) + 1.0) / T, [0.0]])


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("num_steps,eta", [(10, 0.0), (50, 0.0), (20, 1.0)])
def test_ddim_matches_diffusers(name, num_steps, eta):
  # DDIMScheduler steps from timestep k to k - T // n: with "trailing" spacing and n dividing T
  # this is its own grid (999, 899, ..., 99, then alpha = 1); for other n it is not.
  assert T % num_steps == 0
  schedule = _schedule(name)
  params = _params(schedule)
  peer = diffusers.DDIMScheduler(num_train_timesteps=T, set_alpha_to_one=True,
                                 timestep_spacing="trailing", prediction_type="epsilon",
                                 clip_sample=False, thresholding=False,
                                 **DIFFUSERS_SCHEDULE[name])
  _use_float64_schedule(peer, schedule)
  peer.set_timesteps(num_steps)
  timesteps = peer.timesteps.numpy()
  np.testing.assert_array_equal(timesteps, np.arange(T - 1, -1, -T // num_steps))
  times = _trailing_times(timesteps)  # 1.0, 0.9, ..., 0.1, 0.0 for n = 10

  x_init, key = _x_init(), jax.random.key(1)
  ours = _project(schedule, "ddim", times, x_init, key=key, eta=eta)

  eps_fn = _peer_eps(params)
  x = torch.from_numpy(x_init)
  traj, x0_peer = [], []
  for i, tau in enumerate(peer.timesteps):
    noise = torch.from_numpy(_project_noise(key, i, x_init)) if eta > 0 else None
    out = peer.step(eps_fn(x, tau), tau, x, eta=eta, variance_noise=noise)
    x0_peer.append(out.pred_original_sample.numpy())
    x = out.prev_sample
    traj.append(x.numpy())
  traj = np.stack(traj)
  assert _max_diff(f"ddim eta={eta} {name} n={num_steps}", ours, traj) <= TOL

  # The clean-data estimate of every step: diffusers' pred_original_sample against the
  # project's x0 (ModelContext.denoise, what the solvers use) at the same state and time.
  ctx = ModelContext(gaussian_eps, params, None, schedule, BATCH, final=False,
                     num_steps=num_steps)
  states = np.concatenate([x_init[None], ours[:-1]])
  x0_ours = np.stack([np.asarray(ctx.denoise(jnp.asarray(s), jnp.asarray(t)).x0)
                      for s, t in zip(states, times[:-1])])
  assert _max_diff(f"ddim eta={eta} {name} n={num_steps} x0_hat", x0_ours,
                   np.stack(x0_peer)) <= TOL


# --- DPM-Solver++ 2M / 3M -----------------------------------------------------------------


@pytest.mark.parametrize("float64_step", [False, True])
@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("sampler,order,num_steps", [
    ("dpmpp_2m", 2, 10),  # < 15 steps: diffusers' lower_order_second is a no-op for order 2
    ("dpmpp_2m", 2, 20),
    # diffusers' 3M with < 15 steps makes its second-to-last step order 2 (lower_order_second);
    # this project's stays order 3, so 3M is compared with >= 15 steps only.
    ("dpmpp_3m", 3, 15),
    ("dpmpp_3m", 3, 25),
])
def test_dpm_solver_pp_matches_diffusers(name, sampler, order, num_steps, float64_step,
                                         monkeypatch):
  schedule = _schedule(name)
  params = _params(schedule)
  peer = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=T, algorithm_type="dpmsolver++", solver_order=order,
      solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero",
      timestep_spacing="trailing", thresholding=False, prediction_type="epsilon",
      **DIFFUSERS_SCHEDULE[name])
  _use_float64_schedule(peer, schedule)
  peer.set_timesteps(num_steps)
  timesteps = peer.timesteps.numpy()
  assert len(timesteps) == num_steps and timesteps[0] == T - 1
  # diffusers' grid, in float64: the training sigmas at its integer timesteps, then 0 (its own
  # grid is the same numbers rounded to float32).
  sigmas = np.concatenate([_full_sigmas(schedule)[timesteps], [0.0]])
  np.testing.assert_allclose(peer.sigmas.double().numpy(), sigmas, rtol=1e-6)
  peer.sigmas = torch.from_numpy(sigmas)
  times = _trailing_times(timesteps)

  x_init = _x_init()
  ours = _project(schedule, sampler, times, x_init)

  if float64_step:
    _float64_steps(monkeypatch, diffusers.schedulers.scheduling_dpmsolver_multistep)
  traj = _peer_vp_trajectory(peer, params, x_init)
  label = f"{sampler} {name} n={num_steps}{' float64 step' if float64_step else ''}"
  assert _max_diff(label, ours, traj) <= (STRICT_TOL if float64_step else TOL)


# --- Heun ---------------------------------------------------------------------------------


def _heun_grid(peer, schedule, num_steps, karras):
  """diffusers Heun's sigma grid and its timesteps, recomputed in float64 with its own
  formulas and checked against its float32 ones: sigmas [n + 1] ending at 0, taus [n]."""
  full = _full_sigmas(schedule)
  if karras:  # its Karras ramp runs from sigma(T - 1) to sigma(0) (0-based), rho = 7
    sigmas = np.asarray(peer._convert_to_karras(in_sigmas=full[[T - 1, 0]],
                                                num_inference_steps=num_steps), np.float64)
    taus = np.asarray(peer._sigma_to_t(sigmas, np.log(full)), np.float64)
  else:  # "trailing": integer timesteps, where its np.interp of sigma is exact
    taus = np.round(np.arange(T, 0, -T / num_steps)) - 1.0
    sigmas = full[taus.astype(np.int64)]
  sigmas = np.concatenate([sigmas, [0.0]])
  # Its layout: every intermediate sigma and timestep twice (predictor, then corrector).
  peer_sigmas = peer.sigmas.double().numpy()
  np.testing.assert_allclose(np.concatenate([peer_sigmas[:1], peer_sigmas[1::2]]), sigmas,
                             rtol=1e-6)
  peer_taus = peer.timesteps.double().numpy()
  np.testing.assert_allclose(np.concatenate([peer_taus[:1], peer_taus[1::2]]), taus, atol=1e-3)
  return sigmas, taus


def _repeat_inner(a):
  a = torch.from_numpy(np.asarray(a, np.float64))
  return torch.cat([a[:1], a[1:].repeat_interleave(2)])


# Before the fix in heun.py, its churn noise std was sqrt(sigma_hat^2 - sigma_t^2), which XLA
# contracted into an FMA returning the rounding error of sigma_t^2 (not 0) at churn = 0: real
# noise of ~sqrt(eps) sigma (1e-8 relative in float64, 1e-4 in float32). Found by this
# comparison. The `exact` cases hold the fixed solver to 1e-8 (the cosine trailing grid's first
# step jumps from sigma = 2e4 to 6 and amplifies rounding to ~2e-9).
HEUN_EXACT_TOL = 1e-8


@pytest.mark.parametrize("name", ["cosine", "linear"])
@pytest.mark.parametrize("grid,num_steps,exact", [
    ("karras", 10, False),
    ("karras", 25, False),
    ("trailing", 10, False),
    ("trailing", 20, False),
    ("karras", 10, True),
    ("trailing", 20, True),
])
def test_heun_matches_diffusers(name, grid, num_steps, exact):
  schedule = _schedule(name)
  params = _params(schedule)
  karras = grid == "karras"
  peer = diffusers.HeunDiscreteScheduler(
      num_train_timesteps=T, prediction_type="epsilon", clip_sample=False,
      use_karras_sigmas=karras, timestep_spacing="linspace" if karras else "trailing",
      **DIFFUSERS_SCHEDULE[name])
  _use_float64_schedule(peer, schedule)
  peer.set_timesteps(num_steps)
  sigmas, taus = _heun_grid(peer, schedule, num_steps, karras)
  # Its sigmas [s0, s1, s1, ..., s_{n-1}, s_{n-1}, 0] and timesteps [t0, t1, t1, ..., t_{n-1},
  # t_{n-1}]: 2n - 1 calls, the last a plain Euler step to sigma = 0 (as this project's).
  peer.sigmas = torch.cat([_repeat_inner(sigmas[:-1]), torch.zeros(1, dtype=torch.float64)])
  peer.timesteps = _repeat_inner(taus)
  peer.set_begin_index(0)
  assert len(peer.timesteps) == 2 * num_steps - 1 == samplers.nfe("heun", num_steps)

  # The same grid in this project's times; diffusers' continuous timestep is linear in log
  # sigma between training steps, which is this project's log-SNR interpolation.
  times = np.concatenate([np.asarray(schedule.time_at_sigma(jnp.asarray(sigmas[:-1]))), [0.0]])
  np.testing.assert_allclose(times[:-1], (taus + 1.0) / T, rtol=0, atol=1e-12)
  np.testing.assert_allclose(np.asarray(schedule.sigma_at(jnp.asarray(times))), sigmas,
                             rtol=1e-12)

  x_init = _x_init()
  ours = _project(schedule, "heun", times, x_init)

  eps_fn = _peer_eps(params)
  x = torch.from_numpy(x_init) * np.sqrt(1.0 + sigmas[0] ** 2)  # x~ = x / sqrt(ab)
  traj = []
  for k, tau in enumerate(peer.timesteps):
    eps = eps_fn(peer.scale_model_input(x, tau), tau)
    x = peer.step(eps, tau, x).prev_sample
    if peer.state_in_first_order or k == len(peer.timesteps) - 1:  # a whole step is done
      sigma = sigmas[len(traj) + 1]
      traj.append(x.numpy() / np.sqrt(1.0 + sigma**2))  # back to x = sqrt(ab) x~
  traj = np.stack(traj)
  assert traj.shape[0] == num_steps
  diff = _max_diff(f"heun {grid} {name} n={num_steps}{' exact' if exact else ''}", ours, traj)
  assert diff <= (HEUN_EXACT_TOL if exact else TOL)


# --- Euler ancestral ----------------------------------------------------------------------


@pytest.mark.parametrize("name,float64_step", [
    ("linear", False),
    ("linear", True),
    # diffusers' float32 cast of x~ ~ sigma_max z = 2e4 z costs 2e-4 here: float64 step only.
    ("cosine", True),
])
@pytest.mark.parametrize("num_steps", [10, 30])
def test_euler_ancestral_matches_diffusers(name, float64_step, num_steps, monkeypatch):
  schedule = _schedule(name)
  params = _params(schedule)
  peer = diffusers.EulerAncestralDiscreteScheduler(
      num_train_timesteps=T, prediction_type="epsilon", timestep_spacing="trailing",
      **DIFFUSERS_SCHEDULE[name])
  _use_float64_schedule(peer, schedule)
  peer.set_timesteps(num_steps)
  timesteps = peer.timesteps.numpy().astype(np.int64)
  sigmas = np.concatenate([_full_sigmas(schedule)[timesteps], [0.0]])
  np.testing.assert_allclose(peer.sigmas.double().numpy(), sigmas, rtol=1e-6)
  peer.sigmas = torch.from_numpy(sigmas)
  times = _trailing_times(timesteps)

  # diffusers starts from x~ = sigma_max z; this project from x = sqrt(ab) x~ (same point).
  z = _x_init()
  x_init = z * sigmas[0] / np.sqrt(1.0 + sigmas[0] ** 2)
  key = jax.random.key(2)
  ours = _project(schedule, "euler_a", times, x_init, key=key, eta=1.0)

  # diffusers draws its noise with randn_tensor inside step(); hand it the project's draws.
  draws = iter([_project_noise(key, i, x_init) for i in range(num_steps)])
  module = diffusers.schedulers.scheduling_euler_ancestral_discrete
  monkeypatch.setattr(module, "randn_tensor",
                      lambda shape, dtype=None, **kw: torch.from_numpy(next(draws)).to(dtype))
  if float64_step:
    _float64_steps(monkeypatch, module)
  eps_fn = _peer_eps(params)
  x = torch.from_numpy(z) * float(peer.init_noise_sigma)
  traj = []
  for i, tau in enumerate(peer.timesteps):
    eps = eps_fn(peer.scale_model_input(x, tau), tau)
    x = peer.step(eps, tau, x).prev_sample
    traj.append(x.numpy() / np.sqrt(1.0 + sigmas[i + 1] ** 2))
  traj = np.stack(traj)
  label = f"euler_a {name} n={num_steps}{' float64 step' if float64_step else ''}"
  assert _max_diff(label, ours, traj) <= TOL


# --- UniPC --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,bh,order,num_steps", [
    ("cosine", 2, 2, 10),  # diffusers' defaults (bh2, order 2)
    ("linear", 1, 2, 12),
    ("cosine", 2, 3, 10),
    ("linear", 1, 3, 25),
])
def test_unipc_matches_diffusers(name, bh, order, num_steps):
  """On diffusers' trailing grid (uneven in log-SNR): its predictor, corrector, warm-up and
  lower-order final steps (`lower_order_final`, final sigma zero) against this project's."""
  schedule = _schedule(name)
  params = _params(schedule)
  peer = diffusers.UniPCMultistepScheduler(
      num_train_timesteps=T, solver_order=order, solver_type=f"bh{bh}", predict_x0=True,
      lower_order_final=True, final_sigmas_type="zero", timestep_spacing="trailing",
      thresholding=False, prediction_type="epsilon", **DIFFUSERS_SCHEDULE[name])
  _use_float64_schedule(peer, schedule)
  peer.set_timesteps(num_steps)
  timesteps = peer.timesteps.numpy()
  sigmas = np.concatenate([_full_sigmas(schedule)[timesteps], [0.0]])
  np.testing.assert_allclose(peer.sigmas.double().numpy(), sigmas, rtol=1e-6)
  peer.sigmas = torch.from_numpy(sigmas)
  times = _trailing_times(timesteps)

  x_init = _x_init()
  ours = _project(schedule, "unipc", times, x_init, order=order, bh=bh)

  # diffusers returns the predicted (uncorrected) state of each step; this project's
  # trajectory holds the same predicted states (each is corrected at the next step's start).
  traj = _peer_vp_trajectory(peer, params, x_init)
  if bh == 1:  # diffusers' bh1 step to sigma = 0 is NaN: B(h) = h = -inf times a zero residual
    assert np.isnan(traj[-1]).all() and np.isfinite(ours[-1]).all()
    ours, traj = ours[:-1], traj[:-1]
  # Measured 1e-12 (cosine) and 1e-14 (linear): diffusers' UniPC step keeps float64.
  assert _max_diff(f"unipc bh{bh} order {order} {name} n={num_steps}", ours, traj) <= STRICT_TOL
