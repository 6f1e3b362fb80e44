"""The upscale ARDM (`ardiff.processes.autoregressive.upscale`) against brute force on a toy
callback (D = 3 pixels, L = 5 levels, divisors (2, 1)): the bound by enumerating stages, orders
and the chain rule of the restricted conditionals in float64, the sampler's exact law (k = 1 and
k = D) by chi-square, the stages' consistency; then the transformer change and training."""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tests.processes.autoregressive.test_autoregressive import (_check_law, _digit_batch,
                                                             adam_steps)
from tests.processes.test_contract import tiny_images

from ardiff import build
from ardiff.configs.validation import ConfigError
from ardiff.metrics import held_out
from ardiff.models.transformer import Transformer
from ardiff.processes import randomness
from ardiff.processes.autoregressive import upscale
from ardiff.processes.guidance import Guidance
from ardiff.processes.token_samplers import upscale as upscale_sampler

D, LEVELS, DIVS = 3, 5, (2, 1)
S = len(DIVS)
# The layout written out by hand: stage 0 bins {0,1},{2,3},{4} -> ids 0..2; stage 1 values
# 0..4 -> ids 3..7; the mask id 8.
OFFSETS, MASK, N_IDS = (0, 3), 8, 9
LAYOUT = upscale.Stages(LEVELS, DIVS)
XS = np.asarray(list(itertools.product(range(LEVELS), repeat=D)), np.int64)  # [125, 3]
ORDERS = list(itertools.permutations(range(D)))
# Every id votes for the values it is consistent with (a strong "copy" term: refining pixels
# changes the others' conditionals), plus a random part per pixel pair (so orders matter).
COPY = np.zeros((N_IDS, LEVELS))
for _v in range(LEVELS):
  COPY[OFFSETS[0] + _v // DIVS[0], _v] = COPY[OFFSETS[1] + _v, _v] = 1.0
TABLE = np.asarray(0.8 * np.random.default_rng(7).normal(size=(D, D, N_IDS, LEVELS)) + 2.5 * COPY,
                   np.float32)  # logits of pixel i: sum_j TABLE[i, j, id_j]


def toy_logits(tokens: jax.Array) -> jax.Array:
  """A network-free "model": ids [B, D] -> logits [B, D, L]; each pixel's logits depend on
  every pixel's id (so which pixels are refined, and to what, matters)."""
  onehot = jax.nn.one_hot(tokens, N_IDS, dtype=jnp.float32)
  return jnp.einsum("bjt,ijtv->biv", onehot, jnp.asarray(TABLE))


def toy64(ids: np.ndarray) -> np.ndarray:
  """The same logits in float64 NumPy: ids [B, D] -> [B, D, L]."""
  table = TABLE.astype(np.float64)
  return sum(table[:, j][:, ids[:, j]].transpose(1, 0, 2) for j in range(D))


def ids64(values: np.ndarray, stage: np.ndarray) -> np.ndarray:
  """Input ids from values [B, D] and per-pixel stage (-1 hidden), by hand."""
  out = np.full(values.shape, MASK)
  for s, (off, d) in enumerate(zip(OFFSETS, DIVS)):
    out = np.where(stage == s, off + values // d, out)
  return out


def log_cond64(logits: np.ndarray, x: np.ndarray, s: int, restrict: bool = True) -> np.ndarray:
  """log p_s(x // d_s | coarse x // d_{s-1}) from logits [B, L] for values x [B], float64:
  restrict to the coarse bin, renormalise, sum over the stage-s bin."""
  v = np.arange(LEVELS)
  prev = LEVELS if s == 0 else DIVS[s - 1]
  allowed = (v[None] // prev == x[:, None] // prev) | (not restrict)
  target = allowed & (v[None] // DIVS[s] == x[:, None] // DIVS[s])
  z = np.where(allowed, logits, -np.inf)
  m = z.max(axis=1, keepdims=True)
  p = np.exp(z - m)
  return np.log(np.where(target, p, 0).sum(1)) - np.log(p.sum(1))


def order_logp64(x: np.ndarray, s: int, order) -> np.ndarray:
  """log prob of stage s's values along one order given x at stage s - 1: [B]."""
  total = np.zeros(len(x))
  rows = np.arange(len(x))
  for t, pos in enumerate(order):
    stage = np.full(x.shape, s - 1)
    stage[:, list(order[:t])] = s
    total += log_cond64(toy64(ids64(x, stage))[rows, pos], x[:, pos], s)
  return total


def exact_bound_and_logp():
  """(bound [125]: sum_s mean_orders -log p_s,order; log p [125] of the sampler's law with
  k = 1: sum_s log mean_orders p_s,order)."""
  per = np.stack([np.stack([order_logp64(XS, s, o) for o in ORDERS]) for s in range(S)])
  bound = -per.mean(axis=1).sum(axis=0)
  logp = np.log(np.exp(per).mean(axis=1)).sum(axis=0)
  return bound, logp


def test_stages_layout_and_validation():
  assert LAYOUT.bins == (3, 5) and LAYOUT.offsets == OFFSETS and LAYOUT.mask_id == MASK
  assert LAYOUT.input_vocab_size == N_IDS
  l17 = upscale.Stages(17, (4, 1))
  assert l17.bins == (5, 17) and l17.mask_id == 22
  assert upscale.Stages(17, (8, 2, 1)).bins == (3, 9, 17)
  stage = np.array([[-1, 0, 1]] * len(XS))
  np.testing.assert_array_equal(np.asarray(LAYOUT.tokens(jnp.asarray(XS), stage)),
                                ids64(XS, stage))
  for bad in [(3, 2, 1), (4, 2), (2, 2, 1), (), (0, 1), (1, 2)]:
    with pytest.raises(ValueError, match="divisors"):
      upscale.Stages(17, bad)


def test_bound_by_enumeration_and_above_the_exact_nll():
  bound, logp = exact_bound_and_logp()
  np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-12)  # a normalised law
  assert (bound >= -logp - 1e-12).all()
  assert (bound + logp).max() > 1e-2  # strict somewhere: the orders disagree
  # The library's estimate for every (s, refined set), averaged as its randomness is drawn:
  # s uniform, t uniform in 0..D-1, the refined set uniform among those of size t.
  x = jnp.asarray(XS, jnp.int32)
  y = jnp.zeros(len(XS), jnp.int32)
  fn = jax.jit(lambda s, refined: upscale.upscale_loss_given(
      lambda t, _: toy_logits(t), x, y, jnp.full(len(XS), s), refined, LAYOUT))
  terms = []  # [S, D] of [125] conditional expectations given (s, t)
  for s in range(S):
    row = []
    for t in range(D):
      ests = []
      for subset in itertools.combinations(range(D), t):
        refined = np.zeros(XS.shape, bool)
        refined[:, list(subset)] = True
        ests.append(np.asarray(fn(s, jnp.asarray(refined)), np.float64))
      row.append(np.mean(ests, axis=0))
    terms.append(row)
  expectation = np.mean(terms, axis=(0, 1))
  np.testing.assert_allclose(expectation, bound, rtol=2e-5)
  # The one-sample estimate with its own randomness (s, t, order): Monte Carlo within 5 se,
  # on the constant images, where refining pixels helps most.
  const = np.flatnonzero((XS == XS[:, :1]).all(axis=1))
  reps = 2000
  xx = jnp.asarray(np.tile(XS[const], (reps, 1)), jnp.int32)
  est = np.asarray(jax.jit(lambda k: upscale.upscale_loss(
      lambda t, _: toy_logits(t), xx, jnp.zeros(len(xx), jnp.int32), k, LAYOUT))(
          jax.random.key(0)), np.float64)
  se = est.std() / math.sqrt(len(est))
  target = bound[const].mean()
  biased = np.asarray(terms)[:, 1:, const].mean()  # t from 1..D-1 instead of 0..D-1
  assert abs(biased - target) > 10 * se, (biased, target, se)  # the check's power
  assert abs(est.mean() - target) < 5 * se, (est.mean(), target, se)


def test_held_out_chain_rule_along_given_orders():
  x = jnp.asarray(XS, jnp.int32)
  for o0, o1 in [((0, 1, 2), (2, 1, 0)), ((1, 2, 0), (1, 0, 2))]:
    got = np.asarray(jax.jit(lambda so: upscale.upscale_order_nll(
        lambda t, _: toy_logits(t), x, jnp.zeros(len(XS), jnp.int32), so, LAYOUT))(
            jnp.asarray([o0, o1])), np.float64)
    want = -(order_logp64(XS, 0, o0) + order_logp64(XS, 1, o1))
    np.testing.assert_allclose(got, want, rtol=2e-5)


def sample(k: int, n: int, seed: int, history: bool = False):
  """Values [n, D] from the toy model (with history: and the input ids after every step)."""
  keys = randomness.example_keys(jax.random.key(seed), n)
  decoder = upscale_sampler.upscale_history if history else upscale_sampler.upscale_decode
  return jax.jit(lambda kk: decoder(toy_logits, kk, D, LAYOUT, k))(keys)


def counts(x) -> np.ndarray:
  return np.bincount(np.asarray(x) @ LEVELS ** np.arange(D - 1, -1, -1), minlength=LEVELS ** D)


def independent_law64(restrict: bool = True) -> np.ndarray:
  """k = D: each stage draws every pixel at once given the previous stage: p(x) [125]."""
  logp = np.zeros(len(XS))
  for s in range(S):
    lg = toy64(ids64(XS, np.full(XS.shape, s - 1)))
    logp += sum(log_cond64(lg[:, i], XS[:, i], s, restrict) for i in range(D))
  return np.exp(logp)


def unrestricted_law64() -> np.ndarray:
  """k = 1 with stage 1 drawn from the unrestricted softmax (may contradict stage 0)."""
  coarse = np.asarray(list(itertools.product(range(LAYOUT.bins[0]), repeat=D)))  # [27, 3]
  rep = coarse * DIVS[0]  # a value in each bin: ids at stage 0 depend only on the bin
  p0 = np.mean([np.exp(order_logp64(rep, 0, o)) for o in ORDERS], axis=0)  # [27]
  law = np.zeros(len(XS))
  rows = np.arange(len(XS))
  for c, pc in zip(rep, p0):
    mix = np.zeros(len(XS))
    for order in ORDERS:
      logp = np.zeros(len(XS))
      for t, pos in enumerate(order):
        stage = np.zeros(XS.shape, int)
        stage[:, list(order[:t])] = 1
        vals = np.where(stage == 1, XS, c[None])
        logits = toy64(ids64(vals, stage))[rows, pos]
        logp += log_cond64(logits, XS[:, pos], 1, restrict=False)
      mix += np.exp(logp) / len(ORDERS)
    law += pc * mix
  return law


def test_sampler_law_chi_square_k1_and_kD():
  _, logp = exact_bound_and_logp()
  k1_law, kd_law = np.exp(logp), independent_law64()
  np.testing.assert_allclose(kd_law.sum(), 1.0, rtol=1e-12)
  wrong_unrestricted = unrestricted_law64()
  np.testing.assert_allclose(wrong_unrestricted.sum(), 1.0, rtol=1e-12)
  n = 50_000
  _check_law(counts(sample(1, n, 1)), k1_law,
             {"k=D law": kd_law, "unrestricted stage 1": wrong_unrestricted})
  _check_law(counts(sample(D, n, 2)), kd_law,
             {"k=1 law": k1_law, "unrestricted": independent_law64(restrict=False)
              / independent_law64(restrict=False).sum()})


def test_stages_are_consistent_and_steps_reveal_their_counts():
  n = 2000
  for k in (1, 2, 3):
    steps = math.ceil(D / k)
    sizes = [k] * (D // k) + ([D % k] if D % k else [])
    x, history = sample(k, n, 10 + k, history=True)
    x, history = np.asarray(x), np.asarray(history)
    assert history.shape == (S * steps, n, D)
    np.testing.assert_array_equal(history[-1], OFFSETS[1] + x)  # the final ids are the values
    prev = np.full((n, D), MASK)
    for i, ids in enumerate(history):
      s, j = divmod(i, steps)
      changed = ids != prev
      assert (changed.sum(axis=1) == sizes[j]).all(), (k, i)
      lo, hi = OFFSETS[s], OFFSETS[s] + LAYOUT.bins[s]
      assert ((ids[changed] >= lo) & (ids[changed] < hi)).all()  # revealed at stage s
      if j == steps - 1:  # the stage is complete: every pixel at stage s, and x agrees with it
        np.testing.assert_array_equal(ids - OFFSETS[s], x // DIVS[s])
      prev = ids


def test_nfe_specs_and_guidance():
  process, params, _ = _tiny_process(length=64, width=16)
  for k, steps in [(None, 64), (1, 64), (4, 16), (7, 10), (64, 1)]:
    spec = "upscale" if k is None else f"upscale:k={k}"
    assert process.nfe(spec) == S * steps  # divisors (2, 1) below: S = 2
    assert process.nfe(spec, guidance=Guidance(3.0)) == 2 * S * steps
  for bad in ["upscale:k=0", "upscale:k=65", "upscale:k=1.5", "upscale:temperature=0"]:
    with pytest.raises(ValueError, match="k must|temperature"):
      process.nfe(bad)
  with pytest.raises(ValueError, match="unknown sampler 'ardm'"):
    process.nfe("ardm")
  labels = np.array([0, 1, 2, 10], np.int32)
  x = np.asarray(process.sample(params, jax.random.key(0), labels, "upscale:k=16",
                                guidance=Guidance(2.0)))
  assert x.shape == (4, 8, 8, 1) and x.max() < 17


def _tiny_process(length=64, width=32, divisors=(2, 1), p_uncond=0.1, **kw):
  layout = upscale.Stages(17, divisors)
  model = Transformer(vocab_size=17, seq_len=length, num_classes=10, width=width, depth=1,
                      heads=2, causal=False, input_vocab_size=layout.input_vocab_size, **kw)
  side = math.isqrt(length)
  process = upscale.UpscaleAR(model, divisors, p_uncond=p_uncond, data_shape=(side, side, 1))
  params = process.init_params(jax.random.key(0), _digit_batch(2, length))
  return process, params, layout


def test_process_checks_its_model_and_builder_section():
  process, _, _ = _tiny_process()
  with pytest.raises(ValueError, match="input_vocab_size=23"):
    upscale.UpscaleAR(process.model.clone(input_vocab_size=None), (4, 1))
  with pytest.raises(ValueError, match="causal=False"):
    upscale.UpscaleAR(process.model.clone(causal=True), (2, 1))
  section, extra, _ = build.BUILDERS.get("upscale").example()
  built = build.build("upscale", section, tiny_images(), **extra)
  assert built.divisors == (2, 1) and built.model.input_vocab_size == 3 + 5 + 1
  assert build.build("upscale", section, tiny_images()).divisors == (4, 1)  # the default
  with pytest.raises(ConfigError, match=r"'upscale' has no key\(s\) \['bogus'\]"):
    build.build("upscale", section, tiny_images(), upscale={"bogus": 1})
  with pytest.raises(ConfigError, match="upscale.divisors"):
    build.build("upscale", section, tiny_images(), upscale={"divisors": [3, 2, 1]})


def test_transformer_input_vocab_size_leaves_existing_models_unchanged():
  """None is the old model: the same parameter tree and outputs as before the field existed
  (sums pinned from the code before it, commit 06ce9a9) and as input_vocab_size = V + 1."""
  pinned = {True: (59.36671817270326, -34.76468915492296),
            False: (59.28911024509216, -25.855904892086983)}
  y = jnp.array([0, 1, 2, 3])
  for causal in (True, False):
    kw = dict(vocab_size=5, seq_len=6, num_classes=3, width=16, depth=2, heads=2, causal=causal)
    model = Transformer(**kw)
    x = jax.random.randint(jax.random.key(1), (4, 6), 0, 5 if causal else 6)
    params = model.init(jax.random.key(0), x, y)
    out = np.asarray(model.apply(params, x, y), np.float64)
    assert params["params"]["tok_emb"]["embedding"].shape == (5 if causal else 6, 16)
    leaves = jax.tree.leaves(params)
    assert sum(np.asarray(leaf, np.float64).sum() for leaf in leaves) == pinned[causal][0]
    np.testing.assert_allclose(out.sum(), pinned[causal][1], rtol=1e-6)
    if not causal:
      same = Transformer(**kw, input_vocab_size=6)
      p2 = same.init(jax.random.key(0), x, y)
      assert jax.tree.structure(p2) == jax.tree.structure(params)
      for a, b in zip(leaves, jax.tree.leaves(p2)):
        np.testing.assert_array_equal(a, b)
      np.testing.assert_array_equal(np.asarray(same.apply(p2, x, y), np.float64), out)
      bigger = Transformer(**kw, input_vocab_size=11)
      p3 = bigger.init(jax.random.key(0), jnp.full((4, 6), 10), y)
      assert p3["params"]["tok_emb"]["embedding"].shape == (11, 16)
      assert bigger.apply(p3, jnp.full((4, 6), 10), y).shape == (4, 6, 5)
  with pytest.raises(ValueError, match="input_vocab_size"):
    Transformer(**dict(kw, causal=True), input_vocab_size=7).init(jax.random.key(0), x, y)


def test_training_decreases_the_loss_and_label_dropping():
  process, params, _ = _tiny_process(p_uncond=0.2, divisors=(4, 1))
  batch = _digit_batch()
  loss_fn = jax.jit(process.loss, static_argnames="train")
  loss, metrics = loss_fn(params, batch, jax.random.key(1), train=False)
  np.testing.assert_allclose(loss, metrics["bound"] / 64, rtol=1e-6)
  np.testing.assert_allclose(metrics["bound_bpd"], metrics["bound"] / (64 * math.log(2)),
                             rtol=1e-6)
  assert abs(float(loss) - math.log(17)) < 1.0  # near uniform at init
  before = held_out.test_bpd(process, params, batch["x"], batch["y"], jax.random.key(2))
  assert abs(before - math.log2(17)) < 1.0
  params = adam_steps(process, params, batch)
  after, _ = loss_fn(params, batch, jax.random.key(1), train=False)
  assert float(after) < float(loss) - 0.5, (float(loss), float(after))
  after_bpd = held_out.test_bpd(process, params, batch["x"], batch["y"], jax.random.key(2),
                                batch_size=20)
  assert after_bpd < before - 0.5, (before, after_bpd)
  # Label dropping (p_uncond = 1): the training loss is the null label's.
  drop = upscale.UpscaleAR(process.model, (4, 1), p_uncond=1.0, data_shape=(8, 8, 1))
  f = jax.jit(lambda b, train: drop.loss(params, b, jax.random.key(3), train)[0],
              static_argnums=1)
  null = {"x": batch["x"], "y": jnp.full_like(batch["y"], 10)}
  np.testing.assert_allclose(f(batch, True), f(null, False), rtol=1e-6)
  assert abs(float(f(batch, False)) - float(f(batch, True))) > 1e-4
