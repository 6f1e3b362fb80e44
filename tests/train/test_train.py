"""Training: EMA follows its recursion, resume equals uninterrupted, SIGTERM saves, 1 device
equals 8 devices."""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ardiff.data.base import batch_indices
from ardiff.train import (Preempted, TrainConfig, init_state, make_optimizer, train,
                          train_step)
from tests.train.helpers import tiny_setup
from tests._xla import with_device_count

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_batch_indices_depend_on_seed_and_step_only():
  a = batch_indices(3, 17, 10, 95)
  np.testing.assert_array_equal(a, batch_indices(3, 17, 10, 95))
  assert not np.array_equal(a, batch_indices(4, 17, 10, 95))
  # One epoch covers every example exactly once, and the next epoch is a fresh shuffle.
  epoch = np.concatenate([batch_indices(0, s, 10, 50) for s in range(5)])
  np.testing.assert_array_equal(np.sort(epoch), np.arange(50))
  second = np.concatenate([batch_indices(0, s, 10, 50) for s in range(5, 10)])
  np.testing.assert_array_equal(np.sort(second), np.arange(50))
  assert not np.array_equal(epoch, second)
  # A batch that straddles two epochs takes its tail from the next epoch's order.
  straddle = batch_indices(0, 2, 20, 50)  # positions 40..59: epoch 0's last 10, epoch 1's first 10
  np.testing.assert_array_equal(straddle[:10], epoch[40:])
  np.testing.assert_array_equal(straddle[10:], second[:10])


# EMA: a small decay so that e_k = d e_{k-1} + (1 - d) p_k is far from both p_k and e_{k-1}; a
# swapped decay, or an EMA of the pre-update params, then misses the recursion by ~1e-3, while
# float32 rounding stays ~1e-7. With warm-up (the default) d_n = min(0.9, (1 + n) / (10 + n))
# for n = 0..EMA_STEPS-1 is 0.1, 0.18, ..., 0.4: every step is in warm-up, and an off-by-one in
# n (0.18 for 0.1 at the first step) or a swapped ratio ((10 + n) / (1 + n) > 1) misses by far
# more than the tolerance. The cap (min with ema_decay) and the fixed decay of ema_warmup=False
# have their own runs below.
EMA_DECAY = 0.9
EMA_STEPS = 6
EMA_RTOL, EMA_ATOL = 1e-6, 1e-7


def _named_leaves(tree):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_trees_equal(a, b, what):
  a, b = _named_leaves(a), _named_leaves(b)
  assert a.keys() == b.keys(), what
  for name in a:
    np.testing.assert_array_equal(a[name], b[name], err_msg=f"{what}{name}")


def _ema_setup(**overrides):
  process, data, cfg = tiny_setup(steps=EMA_STEPS, **{"ema_decay": EMA_DECAY, **overrides})
  # A checkpoint after every step, all kept: one run yields the whole parameter trajectory.
  cfg = dataclasses.replace(cfg, checkpoint_every=1, keep_checkpoints=EMA_STEPS + 1)
  return process, data, cfg


def _trajectory(workdir):
  """[(params, ema_params)] after steps 1..EMA_STEPS, read back from the run's checkpoints."""
  with ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints")) as manager:
    assert list(manager.all_steps()) == list(range(1, EMA_STEPS + 1))
    out = []
    for k in range(1, EMA_STEPS + 1):
      saved = manager.restore(k, args=ocp.args.StandardRestore())
      assert int(saved["step"]) == k
      out.append((saved["params"], saved["ema_params"]))
  return out


def _warmup_decays(decay, steps):
  """d_n = min(decay, (1 + n) / (10 + n)) for updates n = 0..steps-1, as exact fractions."""
  return [min(decay, float(Fraction(1 + n, 10 + n))) for n in range(steps)]


def _assert_ema_recursion(p0, trajectory, decays):
  """ema_k == d_k ema_{k-1} + (1 - d_k) params_k from ema_0 = params_0, in float64, every leaf
  (decays: one per step, or one number for all)."""
  if np.isscalar(decays):
    decays = [decays] * len(trajectory)
  expected = {name: x.astype(np.float64) for name, x in _named_leaves(p0).items()}
  for k, ((params, ema), decay) in enumerate(zip(trajectory, decays, strict=True), 1):
    params, ema = _named_leaves(params), _named_leaves(ema)
    assert ema.keys() == expected.keys()
    for name in expected:
      expected[name] = decay * expected[name] + (1.0 - decay) * params[name].astype(np.float64)
      np.testing.assert_allclose(ema[name], expected[name], rtol=EMA_RTOL, atol=EMA_ATOL,
                                 err_msg=f"ema_params{name} after step {k}")


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
  """An uninterrupted EMA_STEPS run, plus its initial state (stop_at=0) and its trajectory."""
  process, data, cfg = _ema_setup()
  workdir = tmp_path_factory.mktemp("ema") / "straight"
  initial = train(process, data.x_train, data.y_train, cfg, workdir, stop_at=0,
                  log=lambda m: None)
  final = train(process, data.x_train, data.y_train, cfg, workdir, log=lambda m: None)
  return dict(initial=initial, final=final, trajectory=_trajectory(workdir))


def test_ema_follows_decay_recursion(ema_run):
  initial, final, trajectory = ema_run["initial"], ema_run["final"], ema_run["trajectory"]
  # stop_at=0 runs no step and returns the initial state, whose EMA is its params.
  assert int(initial.step) == 0
  _assert_trees_equal(initial.ema_params, initial.params, "initial ema_params vs params")
  # The returned state is the last step's.
  assert int(final.step) == EMA_STEPS
  _assert_trees_equal(final.params, trajectory[-1][0], "final params vs checkpoint")
  _assert_trees_equal(final.ema_params, trajectory[-1][1], "final ema_params vs checkpoint")

  _assert_ema_recursion(initial.params, trajectory, _warmup_decays(EMA_DECAY, EMA_STEPS))

  # Not vacuous: the params move, and the EMA lags them by far more than the tolerance.
  def max_gap(a, b):
    a, b = _named_leaves(a), _named_leaves(b)
    return max(float(np.max(np.abs(a[n] - b[n]))) for n in a)

  assert max_gap(trajectory[-1][0], trajectory[-2][0]) > 1e-3  # last step's update
  assert max_gap(final.ema_params, final.params) > 1e-3


def test_resume_gives_identical_state_and_ema(ema_run, tmp_path):
  """Stop half-way and resume: every leaf of the state (params, EMA, optimiser) and every step
  of the trajectory equal the uninterrupted run's, bit for bit."""
  process, data, cfg = _ema_setup()
  half = train(process, data.x_train, data.y_train, cfg, tmp_path, stop_at=EMA_STEPS // 2,
               log=lambda m: None)
  assert int(half.step) == EMA_STEPS // 2
  straight = ema_run["trajectory"]
  _assert_trees_equal(half.ema_params, straight[EMA_STEPS // 2 - 1][1], "half ema_params")
  resumed = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  assert int(resumed.step) == EMA_STEPS
  _assert_trees_equal(resumed.ema_params, ema_run["final"].ema_params, "resumed ema_params")
  _assert_trees_equal(resumed.params, ema_run["final"].params, "resumed params")
  for x, y in zip(_leaves(ema_run["final"]), _leaves(resumed)):  # opt_state and step too
    np.testing.assert_array_equal(x, y)
  # metrics.jsonl holds one line per step across both runs.
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert steps == list(range(1, EMA_STEPS + 1))
  # Step by step, across the resume boundary: the same trajectory, and the recursion holds.
  trajectory = _trajectory(tmp_path)
  for k, ((p, e), (p_straight, e_straight)) in enumerate(zip(trajectory, straight), 1):
    _assert_trees_equal(p, p_straight, f"params after step {k}")
    _assert_trees_equal(e, e_straight, f"ema_params after step {k}")
  _assert_ema_recursion(ema_run["initial"].params, trajectory,
                        _warmup_decays(EMA_DECAY, EMA_STEPS))


def _step_trajectory(**overrides):
  """(initial params, [(params, ema_params)] after each of EMA_STEPS calls of `train_step`):
  the recursion without the loop's checkpoints (one compile, no orbax)."""
  process, data, cfg = _ema_setup(**overrides)
  tx = make_optimizer(cfg)
  x, y = data.x_train[:cfg.batch_size], data.y_train[:cfg.batch_size]
  state = init_state(process, tx, {"x": x, "y": y}, jax.random.key(0))
  step = jax.jit(functools.partial(train_step, process, tx, cfg.ema_decay,
                                   ema_warmup=cfg.ema_warmup))
  p0, out = state.params, []
  for k in range(EMA_STEPS):
    state, _ = step(state, {"x": x, "y": y}, jax.random.key(k))
    out.append((state.params, state.ema_params))
  return p0, out


def test_ema_without_warmup_is_the_fixed_decay_recursion():
  """ema_warmup=False (models trained before warm-up existed): d = ema_decay at every step."""
  p0, trajectory = _step_trajectory(ema_warmup=False)
  _assert_ema_recursion(p0, trajectory, EMA_DECAY)


def test_ema_warmup_is_capped_by_the_decay():
  """decay 0.15 < (1 + n) / (10 + n) from n = 1 on: d = 0.1, 0.15, 0.15, ... (the cap)."""
  decays = _warmup_decays(0.15, EMA_STEPS)
  assert decays[0] == 0.1 and decays[1:] == [0.15] * (EMA_STEPS - 1)
  p0, trajectory = _step_trajectory(ema_decay=0.15)
  _assert_ema_recursion(p0, trajectory, decays)


def test_ema_warmup_gets_a_new_model_key_and_old_models_keep_theirs():
  from ardiff.presets import train_section
  from ardiff.model_cache import train_key

  assert TrainConfig().ema_warmup
  old = train_key(train_section(ema_warmup=False))
  assert "ema_warmup" not in old  # as before the field existed: cached models stay valid
  assert train_key(train_section())["ema_warmup"] is True


def test_finished_run_is_restored_not_retrained(tmp_path):
  process, data, cfg = tiny_setup(steps=3)
  first = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  messages = []
  again = train(process, data.x_train, data.y_train, cfg, tmp_path, log=messages.append)
  assert any("resumed from step 3" in m for m in messages)
  assert not any(m.startswith("step ") for m in messages)
  for x, y in zip(_leaves(first), _leaves(again)):
    np.testing.assert_array_equal(x, y)


def test_sigterm_saves_and_stops(tmp_path):
  process, data, cfg = tiny_setup(steps=20)

  def log(message):
    if message.startswith("step 5/"):
      signal.raise_signal(signal.SIGTERM)

  with pytest.raises(Preempted, match="step 5"):
    train(process, data.x_train, data.y_train, cfg, tmp_path, log=log)
  ckpts = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert ckpts[-1] == 5
  resumed = train(process, data.x_train, data.y_train, cfg, tmp_path, log=lambda m: None)
  assert int(resumed.step) == 20


def test_bad_train_config_names_the_key():
  with pytest.raises(ValueError, match="train.steps"):
    TrainConfig(steps=-1)
  with pytest.raises(ValueError, match="train.ema_decay"):
    TrainConfig(ema_decay=1.5)


def test_batch_not_divisible_by_devices_is_rejected(tmp_path):
  from ardiff import parallel

  class FakeMesh:
    devices = np.zeros(8)

  with pytest.raises(ValueError, match="divisible by the number of devices"):
    parallel.check_global_batch(12, FakeMesh())


SCRIPT = textwrap.dedent("""
  import json, sys
  import jax, numpy as np
  from ardiff import parallel
  from ardiff.train import train
  from tests.train.helpers import tiny_setup
  assert jax.device_count() == 8, jax.devices()
  out = {}
  for n in (1, 8):
    process, data, cfg = tiny_setup(steps=4)
    losses = []
    def log(m, losses=losses):
      if m.startswith("step "):
        losses.append(float(m.split("loss ")[1].split()[0]))
    mesh = parallel.data_mesh(jax.devices()[:n])
    state = train(process, data.x_train, data.y_train, cfg, sys.argv[1] + f"/{n}", log=log,
                  mesh=mesh)
    leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(state.params)]
    out[n] = {"losses": losses, "params": np.concatenate(leaves).tolist()}

  print("RESULT" + json.dumps(out))
""")


def test_one_device_equals_eight_devices(tmp_path):
  env = dict(os.environ, XLA_FLAGS=with_device_count(8),
             JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT", 1)[1])
  one, eight = result["1"], result["8"]
  assert len(one["losses"]) == 4
  np.testing.assert_allclose(one["losses"], eight["losses"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(one["params"], eight["params"], rtol=1e-4, atol=1e-6)


def _deterministic_ar(width=16):
  """Raster AR without dropout or label dropping: its loss (exact NLL) draws nothing."""
  from ardiff.models.transformer import Transformer
  from ardiff.processes.autoregressive.raster import RasterAR

  model = Transformer(vocab_size=5, seq_len=8, num_classes=3, width=width, depth=1, heads=2,
                      dropout=0.0, causal=True)
  return RasterAR(model, p_uncond=0.0)


def test_gradient_accumulation_is_the_whole_batch_update():
  """4 micro-batches of 64 give the gradient and the update of one batch of 256 (float32, 1e-6).
  SGD, so that the update is proportional to the gradient (Adam's first steps are ~lr * sign(g),
  which turns rounding in near-zero gradients into differences of order lr)."""
  import optax

  from ardiff.train.step import accumulated_grads as _accumulated_grads

  process = _deterministic_ar()
  rng = np.random.default_rng(0)
  batch = {"x": jnp.asarray(rng.integers(0, 5, (256, 8)), jnp.int32),
           "y": jnp.asarray(rng.integers(0, 3, 256), jnp.int32)}
  tx = optax.sgd(0.5)
  state = init_state(process, tx, batch, jax.random.key(0))
  key = jax.random.key(1)
  (loss, _), grads = jax.jit(jax.value_and_grad(
      lambda p: process.loss(p, batch, key), has_aux=True))(state.params)
  (loss4, _), grads4 = jax.jit(functools.partial(_accumulated_grads, process, micro=4))(
      state.params, batch, key)
  np.testing.assert_allclose(float(loss4), float(loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads4)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-7, rtol=1e-5)
  states = {}
  for accum in (1, 4):
    step = jax.jit(functools.partial(train_step, process, tx, 0.9, grad_accum=accum))
    s = state
    for _ in range(3):
      s, _ = step(s, batch, key)
    states[accum] = s
  moved = max(float(jnp.abs(a - b).max()) for a, b in
              zip(jax.tree.leaves(states[1].params), jax.tree.leaves(state.params)))
  assert moved > 1e-2  # the steps did something
  for a, b in zip(jax.tree.leaves((states[1].params, states[1].ema_params)),
                  jax.tree.leaves((states[4].params, states[4].ema_params))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def test_gradient_accumulation_in_train_and_its_config_checks(tmp_path):
  """train() with grad_accum=2 follows the same loss curve as one pass (AdamW: close, not
  equal, see above); bad values name the key."""
  from ardiff.configs import ConfigError

  process = _deterministic_ar()
  rng = np.random.default_rng(1)
  x, y = rng.integers(0, 5, (128, 8)), rng.integers(0, 3, 128)
  losses = {}
  for accum in (1, 2):
    cfg = TrainConfig(steps=4, batch_size=32, learning_rate=1e-2, warmup_steps=1, log_every=1,
                      checkpoint_every=100, grad_accum=accum)
    train(process, x, y, cfg, str(tmp_path / f"a{accum}"), log=lambda *_: None)
    with open(tmp_path / f"a{accum}" / "metrics.jsonl") as f:
      losses[accum] = [json.loads(line)["loss"] for line in f]
  assert len(losses[1]) == 4
  np.testing.assert_allclose(losses[2], losses[1], rtol=1e-4)
  for bad in (3, 0, True):
    with pytest.raises(ConfigError, match="train.grad_accum"):
      TrainConfig(batch_size=32, grad_accum=bad)


def test_steps_in_call_stops_where_the_loop_looks():
  from ardiff.train import steps_in_call

  # 8 per call from step 0, logging every 5, saving every 12, a snapshot at 7, end 30.
  calls, step = [], 0
  while step < 30:
    n = steps_in_call(step, 30, 8, (5, 12, 0), (7,))
    calls.append(n)
    step += n
  assert calls == [5, 2, 3, 2, 3, 5, 4, 1, 5]  # ends at 5 7 10 12 15 20 24 25 30
  assert steps_in_call(29, 30, 8) == 1 and steps_in_call(0, 30, 1, (5,)) == 1


def test_several_steps_per_call_train_like_one_step_per_call(tmp_path):
  """A lax.scan over up to 4 steps per call: the same parameters and the same metrics rows
  (per logged step) as one call per step, with a stop and resume in between."""
  process, data, cfg = tiny_setup(steps=11)
  cfg = dataclasses.replace(cfg, log_every=3, checkpoint_every=5)
  one = train(process, data.x_train, data.y_train, cfg, tmp_path / "one", log=lambda m: None)
  several = dataclasses.replace(cfg, steps_per_call=4)
  train(process, data.x_train, data.y_train, several, tmp_path / "four", stop_at=6,
        log=lambda m: None)
  four = train(process, data.x_train, data.y_train, several, tmp_path / "four",
               log=lambda m: None)
  for a, b in zip(jax.tree.leaves((one.params, one.ema_params, one.opt_state)),
                  jax.tree.leaves((four.params, four.ema_params, four.opt_state)), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  rows = [[json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")] for d in ("one", "four")]
  assert [r["step"] for r in rows[1]] == [r["step"] for r in rows[0]] == [3, 6, 9, 11]
  for a, b in zip(*rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    assert b["learning_rate"] == a["learning_rate"]
  with pytest.raises(Exception, match="train.steps_per_call"):
    TrainConfig(steps_per_call=0)
