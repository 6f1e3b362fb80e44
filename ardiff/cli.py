"""The ardiff command: run an experiment, print its config, sample a trained model, time the code.

  ardiff run EXPERIMENT.py [--workdir=DIR] [--config=SIZE] [--config.KEY=VALUE ...]
                                                                      run an experiment
  ardiff config EXPERIMENT.py [--config=SIZE] [--config.KEY=VALUE ...] print its resolved config
  ardiff sample WORKDIR_OR_MODEL_DIR --spec=ddim:50 [--num=64] [--label=3] [--guidance=2]
                [--negative=1] [--seed=0] --out=FILE.npz                sample a trained model
  ardiff eval WORKDIR_OR_MODEL_DIR --spec=ddim:50 [--num=N] [--label/--guidance/--negative/--seed]
                                 score its samples against the held-out split, with the floor
  ardiff bench WHAT                                                    print a speed table

Config overrides: every key of the experiment's config (list them with `ardiff config
EXPERIMENT.py`) can be set with --config.KEY=VALUE, nested keys with dots
(--config.train.steps=2000), lists as Python literals (--config.ks="[1, 4]"); the value must
have the key's type. --config=SIZE (smoke|quick|small|paper|mnist, those the experiment takes;
default small) selects a size's defaults first, and the other overrides apply on top. Your own
data: --config.dataset=npz --config.data.path=FILE.npz (see README "Your own data").

Bad input (a key, a value, a data file, an experiment path) stops with one line naming it,
exit status 2, before anything is trained or written: `run` writes WORKDIR/config.json only
once the config is valid, and only when it changed (the old one is kept as
config.<UTC time>.json). --debug (or ARDIFF_DEBUG=1) shows the traceback instead.

Compilation cache: run, sample and bench keep compiled XLA programs on disk (default
$XDG_CACHE_HOME/ardiff/jax or ~/.cache/ardiff/jax), so that a second run skips compilation;
ARDIFF_COMPILATION_CACHE=DIR moves it, ARDIFF_COMPILATION_CACHE=off or --no-compile-cache turns
it off (see ardiff/compile_cache.py).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from ardiff import storage
from ardiff.configs import ConfigError, get_experiment_config, to_json
from ardiff.errors import ArdiffError, StorageError

from ardiff.bench import BENCHES  # names only: each bench imports its code when it runs


def _split_overrides(extra: list[str]) -> list[str]:
  """The overrides as key=value strings; --config=SIZE becomes size=SIZE."""
  out = []
  for item in extra:
    if item.startswith("--config="):
      out.append("size=" + item[len("--config="):])
      continue
    if not item.startswith("--config."):
      raise ConfigError(f"unexpected argument {item!r}; config overrides look like "
                        "--config.key=value (or --config=SIZE)")
    out.append(item[len("--config."):])
  return out


def cmd_run(args, extra) -> int:
  import jax

  from ardiff import preflight
  from ardiff.distributed import maybe_initialize
  from ardiff.experiment_helpers import is_chief
  from ardiff.workdir import workdir_lock

  maybe_initialize()
  module, config = get_experiment_config(args.experiment, _split_overrides(extra))  # validates
  workdir = args.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.experiment))[0])
  # What this machine must offer (devices, folders, data), then the work dir, before a write.
  preflight.check_run(config, workdir, devices=jax.device_count(),
                      processes=jax.process_count())
  storage.check_writable(workdir)  # a bucket that is not there: one line, before training
  storage.makedirs(workdir)  # a file in the way, a read-only mount: one line naming it
  with workdir_lock(workdir, "ardiff run", take=is_chief()):  # one run per work dir
    write_config(workdir, to_json(config))
    start = time.perf_counter()
    module.run(config, workdir)
  from ardiff import console

  console.log(f"done in {time.perf_counter() - start:.0f}s; results in {workdir}")
  return 0


def write_config(workdir: str, text: str) -> None:
  """WORKDIR/config.json := text, unless it holds text already; a different one is kept as
  config.<UTC time>.json (a run with new settings never loses the record of the old ones)."""
  storage.makedirs(workdir)
  path = storage.join(workdir, "config.json")
  kept = None
  try:
    if storage.isfile(path):
      if storage.read_text(path) == text:
        return
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
      kept = storage.join(workdir, f"config.{stamp}.json")
      storage.rename(path, kept)
    storage.write_atomic(path, text)
  except OSError as e:  # a read-only folder, a full disk: the old config.json stays in place
    if kept is not None and not storage.exists(path):
      storage.rename(kept, path)
    raise StorageError(f"cannot write {path}: {e.strerror or e}") from None


def cmd_config(args, extra) -> int:
  _, config = get_experiment_config(args.experiment, _split_overrides(extra))
  print(to_json(config))
  return 0


def cmd_sample(args, extra) -> int:
  if extra:
    raise ConfigError(f"unexpected arguments {extra}; see ardiff sample --help")
  from ardiff import sampling_cli

  return sampling_cli.sample_command(args)


def cmd_eval(args, extra) -> int:
  if extra:
    raise ConfigError(f"unexpected arguments {extra}; see ardiff eval --help")
  from ardiff import eval_cli

  return eval_cli.eval_command(args)


def cmd_bench(args, extra) -> int:
  if extra:
    raise ConfigError(f"unexpected arguments {extra}")
  if args.what == "accelerator" and not args.out:  # the report docs/scaling.md asks to send back
    args.out = "accelerator_report.md"
  if args.out:  # checked before the benches run, not after
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
      raise ConfigError(f"--out {args.out!r}: folder {folder!r} does not exist")
    if os.path.isdir(args.out):
      raise ConfigError(f"--out {args.out!r} is a directory")
  from ardiff import bench

  bench.run(args.what, quick=args.quick, out=args.out)
  return 0


def _add_draw_flags(parser: argparse.ArgumentParser) -> None:
  """How `sample` and `eval` draw: the spec, the labels, guidance and the seed."""
  parser.add_argument("--spec", required=True,
                      help="sampling spec, e.g. ddim:50, ddpm:1000, raster, ardm:k=4, oneshot")
  parser.add_argument("--label", type=int, default=None,
                      help="class of every sample (default: unconditional)")
  parser.add_argument(
      "--guidance", type=float, default=None,
      help="classifier-free guidance weight w, towards --label against the null label; without "
           "--label each sample's class is drawn uniformly from --seed (sample saves them in "
           "the .npz), "
           "since guiding the null label against itself changes nothing")
  parser.add_argument("--negative", type=int, default=None,
                      help="negative label to steer away from (needs --guidance; without "
                           "--label, unconditional samples are steered away from it)")
  parser.add_argument("--seed", type=int, default=0)


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--debug", action="store_true",
      help="show the traceback of a bad-input error instead of its one line (also: ARDIFF_DEBUG=1)")
  _add_compile_cache_flag(parser)


def _add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--no-compile-cache", dest="compile_cache", action="store_false",
      help="compile everything afresh, without the persistent compilation cache (default: on, "
           "in $ARDIFF_COMPILATION_CACHE, else $XDG_CACHE_HOME/ardiff/jax or ~/.cache/ardiff/jax; "
           "ARDIFF_COMPILATION_CACHE=off also turns it off)")


# `ardiff run --help`: what run does, then the docstring's paragraphs after the command list.
RUN_DESCRIPTION = (
    "Run an experiment file: train its models (or load them from the model cache), sample and\n"
    "score them, and write config.json, checkpoints, metrics.jsonl, figures and results.md into\n"
    "the work dir.\n\n" + __doc__.split("\n\n", 2)[2])


def version_line() -> str:
  """`ardiff --version`: this package's version, and the JAX and Python it runs on (JAX's from
  the installed packages' metadata: jax is not imported for it)."""
  from importlib import metadata

  import ardiff

  try:
    jax_version = metadata.version("jax")
  except metadata.PackageNotFoundError:
    jax_version = "not installed"
  return f"ardiff {ardiff.__version__} (jax {jax_version}, Python {sys.version.split()[0]})"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="ardiff", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--version", action="version", version=version_line())
  sub = parser.add_subparsers(dest="command", required=True)
  p_run = sub.add_parser(
      "run", help="run an experiment file", description=RUN_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Example: ardiff run experiments/spiral.py --config.train.steps=2000")
  p_run.add_argument("experiment", help="path to an experiment file, e.g. experiments/spiral.py")
  p_run.add_argument("--workdir", default=None, help="output directory (default runs/<name>)")
  _add_common_flags(p_run)
  p_run.set_defaults(fn=cmd_run)
  p_config = sub.add_parser("config", help="print an experiment's resolved config (JSON)")
  p_config.add_argument("experiment", help="path to an experiment file")
  p_config.add_argument("--debug", action="store_true", help="show tracebacks of errors")
  p_config.set_defaults(fn=cmd_config)
  p_sample = sub.add_parser("sample", help="draw samples from a trained model")
  p_sample.add_argument("path", help="a model directory (with model.json) or a work dir")
  p_sample.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
  _add_draw_flags(p_sample)
  p_sample.add_argument("--out", required=True, help="output .npz (a PNG is written beside it)")
  _add_common_flags(p_sample)
  p_sample.set_defaults(fn=cmd_sample)
  p_eval = sub.add_parser(
      "eval", help="score a trained model's samples against its held-out split",
      description="Print the experiment's metrics of samples of a trained model against the "
      "held-out split, beside their floor (the same metric of as many training examples): "
      "sliced W1 and the other point metrics for 2-D points; FD, precision and recall in the "
      "digit classifier's features for images; held-out bits per dim where the process has a "
      "likelihood. The data are rebuilt from the work dir's config.json.",
      epilog="Example: ardiff eval runs/spiral --spec=ddim:50")
  p_eval.add_argument("path", help="a work dir, or a model directory (with model.json) in one")
  p_eval.add_argument("--num", type=int, default=None,
                      help="number of samples (default: as many as the held-out split)")
  _add_draw_flags(p_eval)
  _add_common_flags(p_eval)
  p_eval.set_defaults(fn=cmd_eval)
  p_bench = sub.add_parser("bench", help="print a benchmark table")
  p_bench.add_argument("what", choices=BENCHES + ("all",))
  p_bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
  p_bench.add_argument("--out", default=None,
                       help="also write the table to this markdown file, and its rows to the "
                       "same name with .json (accelerator: default accelerator_report.md)")
  _add_common_flags(p_bench)
  p_bench.set_defaults(fn=cmd_bench)
  args, extra = parser.parse_known_args(argv)
  if args.command != "sample":
    return _dispatch(args, extra)
  # Sampling has nothing to save: SIGTERM from start-up on (jax's import included) is one line
  # and exit 143 at once (`ardiff.sigterm`); training handles it in its loop.
  from ardiff.sigterm import StopOnSigterm

  with StopOnSigterm("sampling", args.out) as args.sigterm:
    return _dispatch(args, extra)


def _dispatch(args, extra) -> int:
  """Run the command; an ArdiffError (or a signal) ends it with one line and its status."""
  if getattr(args, "compile_cache", False):  # before anything compiles (see compile_cache.py)
    from ardiff.compile_cache import enable_compilation_cache

    enable_compilation_cache()
  if hasattr(args, "compile_cache"):  # the commands that compile (run, sample, eval, bench)
    # The same random bits, compiled several times faster on the CPU (threefry_cpu.py).
    from ardiff.threefry_cpu import use_straight_line_threefry

    use_straight_line_threefry()
  from ardiff.train import Preempted

  debug = args.debug or os.environ.get("ARDIFF_DEBUG", "") not in ("", "0")
  try:
    return args.fn(args, extra)
  except ArdiffError as e:  # bad input: one line; anything else is a bug and keeps its traceback
    if debug:
      raise
    kind = "config error: " if isinstance(e, ConfigError) else ""
    print(f"ardiff: {kind}{str(e).replace(chr(10), ' ')}", file=sys.stderr)  # one line
    return e.exit_code
  except Preempted as e:  # SIGTERM: 143, Ctrl-C (Interrupted): 130
    print(f"ardiff: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:  # Ctrl-C outside the training loop: nothing to save there
    print("ardiff: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
