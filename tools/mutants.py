"""Mutation check: does the test suite catch plausible one-line bugs in the maths?

    python tools/mutants.py               # every mutant, one at a time
    python tools/mutants.py --list        # the mutants and the tests that should catch them
    python tools/mutants.py ddim eta      # only mutants whose name contains one of the words
    python tools/mutants.py --jobs 2      # two at a time (each pytest already uses 2 threads)

Each mutant is one exact text replacement in one library file (a wrong sign, a dropped factor,
an off-by-one, a swapped coefficient). For each, the repository's tracked and untracked files
are copied to a temporary folder, the replacement is applied there (it must match exactly once,
so a mutant whose line has moved fails loudly instead of silently testing nothing), and the
tests that cover that code run against the copy. A mutant is "caught" when pytest reports a
failing test (exit code 1); any other outcome (passing, or a collection / import error) is
"NOT CAUGHT" or "ERROR". The script prints one row per mutant and exits 1 unless every mutant
is caught. Not run in CI (about 10 minutes on 2 cores); run it after changing the maths or the
tests, and add a mutant whenever you add numerical code.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
  name: str
  area: str
  path: str  # relative to the repo root
  old: str
  new: str
  tests: tuple[str, ...]  # pytest arguments: files, node ids, or "-k" expressions


def _m(name, area, path, old, new, *tests):
  return Mutant(name, area, path, old, new, tuple(tests))


D, TRAIN, AR, BUDGET = ("tests/processes/gaussian/test_diffusion.py", "tests/test_train.py",
                        "tests/processes/autoregressive/test_autoregressive.py", "tests/processes/autoregressive/test_budget.py")
MUTANTS = (
    # ---- diffusion samplers
    _m("ddim-sigma-drops-(1-ab_s)/(1-ab_t)", "samplers", "ardiff/processes/gaussian/samplers/ddim.py",
       "sigma = args[\"eta\"] * jnp.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))",
       "sigma = args[\"eta\"] * jnp.sqrt(1 - ab_t / ab_s)", D),
    _m("ddim-direction-ignores-sigma", "samplers", "ardiff/processes/gaussian/samplers/ddim.py",
       "jnp.maximum(1 - ab_s - sigma**2, 0.0)", "jnp.maximum(1 - ab_s, 0.0)", D),
    _m("ddpm-one-step-variance-on-strided-steps", "samplers", "ardiff/processes/gaussian/targets.py",
       "var = (1.0 - ab_s) / (1.0 - ab_t) * (1.0 - a_ts)", "var = 1.0 - a_ts", D),
    _m("ddpm-posterior-mean-coefficient-without-sqrt", "samplers", "ardiff/processes/gaussian/targets.py",
       "ct = jnp.sqrt(a_ts) * (1.0 - ab_s) / (1.0 - ab_t)", "ct = a_ts * (1.0 - ab_s) / (1.0 - ab_t)",
       D),
    _m("cfg-extrapolates-from-the-conditional-stream", "samplers", "ardiff/processes/guidance.py",
       "return neg + jnp.asarray(w, out.dtype) * (cond - neg)",
       "return cond + jnp.asarray(w, out.dtype) * (cond - neg)", "tests/processes/test_guidance.py",
       D, AR),
    _m("diffusion-noise-reused-every-step", "samplers", "ardiff/processes/gaussian/samplers/base.py",
       "x_next = step(schedule, x, t, s, eps, discrete.step_keys(keys, i), args)",
       "x_next = step(schedule, x, t, s, eps, discrete.step_keys(keys, 0), args)", D),
    _m("inpaint-replaces-with-the-noise-level-of-t-not-s", "samplers",
       "ardiff/processes/gaussian/inpaint.py", "                    s, k_replace)",
       "                    t, k_replace)",
       "tests/processes/gaussian/test_inpaint.py"),
    # ---- schedules
    _m("cosine-schedule-forgets-/(1+s)", "schedules", "ardiff/processes/gaussian/schedules.py",
       "f = np.cos((steps + offset) / (1 + offset) * np.pi / 2) ** 2",
       "f = np.cos((steps + offset) * np.pi / 2) ** 2", D),
    _m("linear-schedule-rescales-one-endpoint", "schedules", "ardiff/processes/gaussian/schedules.py",
       "np.linspace(scale * 1e-4, scale * 0.02, num_timesteps)",
       "np.linspace(1e-4, scale * 0.02, num_timesteps)", D),
    # ---- diffusion loss and targets
    _m("loss-draws-t-from-0..T-1", "loss", "ardiff/processes/gaussian/process.py",
       "t = jax.random.randint(k_t, (x0.shape[0],), 1, self.num_timesteps + 1)",
       "t = jax.random.randint(k_t, (x0.shape[0],), 0, self.num_timesteps)", D),
    _m("v-target-sign", "loss", "ardiff/processes/gaussian/targets.py",
       "return x_t, jnp.sqrt(ab) * eps - jnp.sqrt(1 - ab) * x0",
       "return x_t, jnp.sqrt(ab) * eps + jnp.sqrt(1 - ab) * x0", D),
    _m("clip-x0-lower-bound", "loss", "ardiff/processes/gaussian/process.py",
       "-self.clip_x0, self.clip_x0)", "-1.0, self.clip_x0)", D),
    _m("label-drop-keeps-dropped-labels", "loss", "ardiff/processes/gaussian/process.py",
       "jax.random.bernoulli(k_drop, self.p_uncond, y.shape), self.null_label, y)",
       "jax.random.bernoulli(k_drop, 1 - self.p_uncond, y.shape), self.null_label, y)", D),
    # ---- bounds
    _m("diffusion-bound-kl-weight-without-alpha_t", "bounds", "ardiff/processes/gaussian/likelihood.py",
       "weight = beta / (2.0 * (1.0 - beta) * _one_minus_alpha_bars(schedule)[t - 1])",
       "weight = beta / (2.0 * _one_minus_alpha_bars(schedule)[t - 1])",
       "tests/processes/gaussian/test_likelihood.py"),
    _m("ardm-weight-L/(L-t+1)", "bounds", "ardiff/processes/autoregressive/objectives.py",
       "return length / n_hidden * jnp.where(hidden, nll, 0.0).sum(axis=-1)",
       "return length / (n_hidden + 1) * jnp.where(hidden, nll, 0.0).sum(axis=-1)", AR),
    _m("ardm-never-draws-nothing-revealed", "bounds", "ardiff/processes/autoregressive/objectives.py",
       "t = jax.random.randint(k_t, (batch, 1), 0, length)",
       "t = jax.random.randint(k_t, (batch, 1), 1, length)", AR),
    _m("raster-nll-averages-positions", "bounds", "ardiff/processes/autoregressive/objectives.py",
       "return token_nll(logits, x).sum(axis=-1)", "return token_nll(logits, x).mean(axis=-1)",
       AR),
    # ---- autoregressive decoding
    _m("temperature-multiplies-logits", "AR decoding", "ardiff/processes/discrete.py",
       "logits.astype(jnp.float32) / temperature", "logits.astype(jnp.float32) * temperature",
       AR),
    _m("ar-guidance-negative-stream-is-class-0", "AR decoding",
       "ardiff/processes/autoregressive/decode.py",
       "neg = jnp.full_like(y, model.num_classes) if neg_y is None",
       "neg = jnp.full_like(y, 0) if neg_y is None", AR),
    _m("kv-cache-feeds-the-current-position", "AR decoding", "ardiff/processes/autoregressive/decode.py",
       "jnp.maximum(pos - 1, 0)", "jnp.maximum(pos, 0)", AR),
    # (Dropping "& ~known_mask" from the parallel decoder's update is an equivalent mutant:
    # order_agnostic_sample rejects plans that reveal known positions, so it cannot differ.)
    _m("ardm-contiguous-and-random-orders-swapped", "AR decoding",
       "ardiff/processes/autoregressive/order_agnostic.py",
       'if spec.get("order", "random") == "contiguous":',
       'if spec.get("order", "random") != "contiguous":', AR),
    # ---- DP budgets
    _m("budget-allows-empty-steps", "budgets", "ardiff/processes/autoregressive/budget.py",
       "step_cost = np.where(t[None, :] > t[:length, None],",
       "step_cost = np.where(t[None, :] >= t[:length, None],", BUDGET),
    _m("budget-cost-reads-the-loss-after-the-step", "budgets", "ardiff/processes/autoregressive/budget.py",
       "return float(np.dot(sizes, losses[starts]))",
       "return float(np.dot(sizes, losses[np.minimum(starts + 1, losses.size - 1)]))", BUDGET),
    # ---- training, EMA, resume
    _m("ema-decay-swapped", "training", "ardiff/train.py",
       "ema_decay * e + (1.0 - ema_decay) * p", "(1.0 - ema_decay) * e + ema_decay * p", TRAIN),
    _m("ema-tracks-the-pre-update-params", "training", "ardiff/train.py",
       "state.ema_params, params)", "state.ema_params, state.params)", TRAIN),
    _m("resume-restarts-the-step-keys", "training", "ardiff/train.py",
       "global_batch(step), jax.random.fold_in(loop_key, step))",
       "global_batch(step), jax.random.fold_in(loop_key, step - start))", TRAIN),
    _m("batches-ignore-the-epoch", "training", "ardiff/data/base.py",
       "perm = np.random.default_rng([seed, int(epoch)]).permutation(n)",
       "perm = np.random.default_rng([seed, 0]).permutation(n)", TRAIN),
    # ---- metrics
    _m("frechet-cross-term-once", "metrics", "ardiff/metrics/frechet.py",
       "np.trace(cov2) - 2.0 * cross)", "np.trace(cov2) - cross)", "tests/metrics/test_frechet.py"),
    _m("frechet-cross-term-of-S1-S2-symmetrised", "metrics", "ardiff/metrics/frechet.py",
       "a = root1 @ cov2 @ root1", "a = cov1 @ cov2", "tests/metrics/test_frechet.py"),
    _m("sliced-wasserstein-quantile-off-by-one", "metrics", "ardiff/metrics/points.py",
       "pos = q * (len(x) - 1)", "pos = q * len(x)", "tests/metrics/test_points.py"),
)


def _repo_files(root: str) -> list[str]:
  out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, check=True,
                       capture_output=True, text=True).stdout
  return [p for p in out.splitlines() if os.path.isfile(os.path.join(root, p))]


def _copy_repo(root: str, dest: str) -> None:
  for rel in _repo_files(root):
    target = os.path.join(dest, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy2(os.path.join(root, rel), target)


def _apply(mutant: Mutant, dest: str) -> None:
  path = os.path.join(dest, mutant.path)
  with open(path) as f:
    text = f.read()
  count = text.count(mutant.old)
  if count != 1:
    raise RuntimeError(f"mutant {mutant.name}: the text to replace occurs {count} times in "
                       f"{mutant.path} (must be exactly once): {mutant.old!r}")
  with open(path, "w") as f:
    f.write(text.replace(mutant.old, mutant.new))


def run_mutant(mutant: Mutant, root: str = ROOT) -> tuple[str, float, str]:
  """(outcome, seconds, last line of pytest's output) for one mutant."""
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(prefix="ardiff-mutant-") as dest:
    _copy_repo(root, dest)
    _apply(mutant, dest)
    # The copy must shadow the (editable) installed package: PYTHONPATH comes first on
    # sys.path, and the check below makes sure the mutated file is the one imported.
    env = dict(os.environ, PYTHONPATH=dest, JAX_PLATFORMS="cpu", PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c", "import ardiff; print(ardiff.__file__)"],
                           cwd=dest, env=env, capture_output=True, text=True)
    if not where.stdout.strip().startswith(dest):
      return "ERROR", time.perf_counter() - start, f"imports ardiff from {where.stdout.strip()}"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                           *mutant.tests], cwd=dest, env=env, capture_output=True, text=True)
  lines = [line for line in proc.stdout.splitlines() if line.strip()]
  last = lines[-1] if lines else proc.stderr.strip()[-200:]
  outcome = {0: "NOT CAUGHT", 1: "caught"}.get(proc.returncode, "ERROR")
  return outcome, time.perf_counter() - start, last


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("words", nargs="*", help="run only mutants whose name contains one")
  parser.add_argument("--list", action="store_true", help="list the mutants and exit")
  parser.add_argument("--jobs", type=int, default=1, help="mutants run at a time (default 1)")
  args = parser.parse_args(argv)
  chosen = [m for m in MUTANTS if not args.words or any(w in m.name for w in args.words)]
  if not chosen:
    print(f"no mutant matches {args.words}; see --list", file=sys.stderr)
    return 2
  if args.list:
    for m in chosen:
      print(f"{m.area:12s} {m.name:48s} {m.path}  <- {' '.join(m.tests)}")
    return 0
  for m in chosen:  # fail fast on a stale mutant, before any test runs
    with open(os.path.join(ROOT, m.path)) as f:
      if f.read().count(m.old) != 1:
        print(f"stale mutant {m.name}: its text is not found exactly once in {m.path}",
              file=sys.stderr)
        return 2
  print(f"{'area':12s} {'mutant':48s} {'outcome':10s} {'s':>6s}  pytest")
  results = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
    for m, (outcome, seconds, last) in zip(chosen, pool.map(run_mutant, chosen)):
      results.append(outcome)
      print(f"{m.area:12s} {m.name:48s} {outcome:10s} {seconds:6.0f}  {last}", flush=True)
  caught = results.count("caught")
  print(f"\n{caught} of {len(results)} mutants caught")
  return 0 if caught == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
