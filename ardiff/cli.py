"""Command line.

  ardiff run EXPERIMENT.py [--workdir=DIR] [--config.KEY=VALUE ...]   run an experiment
  ardiff config EXPERIMENT.py [--config.KEY=VALUE ...]                print its resolved config
  ardiff sample WORKDIR_OR_MODEL_DIR --spec=ddim:50 [--num=64] [--label=3] [--guidance=2]
                [--negative=1] [--seed=0] --out=FILE.npz                sample a trained model
  ardiff bench WHAT                                                    print a speed table

Config overrides: every key of the experiment's config (list them with `ardiff config
EXPERIMENT.py`) can be set with --config.KEY=VALUE, nested keys with dots
(--config.train.steps=2000), lists as Python literals (--config.ks="[1, 4]"); the value must
have the key's type. --config.scale=paper|mnist selects a scale's defaults first, and the other
overrides apply on top. Bad keys and values stop with one line naming the key (exit 2).

Compilation cache: run, sample and bench keep compiled XLA programs on disk (default
$XDG_CACHE_HOME/ardiff/jax or ~/.cache/ardiff/jax), so that a second run skips compilation;
ARDIFF_COMPILATION_CACHE=DIR moves it, ARDIFF_COMPILATION_CACHE=off or --no-compile-cache turns
it off (see ardiff/compile_cache.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ardiff.configs import ConfigError, get_experiment_config, to_json
from ardiff.errors import ArdiffError

from ardiff.bench import BENCHES  # names only: each bench imports its code when it runs


def _split_overrides(extra: list[str]) -> list[str]:
  out = []
  for item in extra:
    if not item.startswith("--config."):
      raise ConfigError(f"unexpected argument {item!r}; config overrides look like "
                        "--config.key=value")
    out.append(item[len("--config."):])
  return out


def cmd_run(args, extra) -> int:
  from ardiff.distributed import maybe_initialize
  from ardiff.runs import is_chief
  from ardiff.workdir import workdir_lock

  maybe_initialize()
  module, config = get_experiment_config(args.experiment, _split_overrides(extra))
  workdir = args.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.experiment))[0])
  os.makedirs(workdir, exist_ok=True)
  with workdir_lock(workdir, "ardiff run", take=is_chief()):  # one run per work dir
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(to_json(config))
    start = time.perf_counter()
    module.run(config, workdir)
  print(f"done in {time.perf_counter() - start:.0f}s; results in {workdir}", file=sys.stderr)
  return 0


def cmd_config(args, extra) -> int:
  _, config = get_experiment_config(args.experiment, _split_overrides(extra))
  print(to_json(config))
  return 0


def cmd_sample(args, extra) -> int:
  if extra:
    raise ConfigError(f"unexpected arguments {extra}; see ardiff sample --help")
  from ardiff import sampling_cli

  return sampling_cli.sample_command(args)


def cmd_bench(args, extra) -> int:
  if extra:
    raise ConfigError(f"unexpected arguments {extra}")
  from ardiff import bench

  bench.run(args.what, quick=args.quick, out=args.out)
  return 0


def _add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--no-compile-cache", dest="compile_cache", action="store_false",
      help="compile everything afresh, without the persistent compilation cache (default: on, "
           "in $ARDIFF_COMPILATION_CACHE, else $XDG_CACHE_HOME/ardiff/jax or ~/.cache/ardiff/jax; "
           "ARDIFF_COMPILATION_CACHE=off also turns it off)")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="ardiff", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  p_run = sub.add_parser(
      "run", help="run an experiment file", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Example: ardiff run experiments/spiral.py --config.train.steps=2000")
  p_run.add_argument("experiment", help="path to an experiment file, e.g. experiments/spiral.py")
  p_run.add_argument("--workdir", default=None, help="output directory (default runs/<name>)")
  _add_compile_cache_flag(p_run)
  p_run.set_defaults(fn=cmd_run)
  p_config = sub.add_parser("config", help="print an experiment's resolved config (JSON)")
  p_config.add_argument("experiment", help="path to an experiment file")
  p_config.set_defaults(fn=cmd_config)
  p_sample = sub.add_parser("sample", help="draw samples from a trained model")
  p_sample.add_argument("path", help="a model directory (with model.json) or a work dir")
  p_sample.add_argument("--spec", required=True,
                        help="sampling spec, e.g. ddim:50, ddpm:1000, raster, ardm:k=4, oneshot")
  p_sample.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
  p_sample.add_argument("--label", type=int, default=None,
                        help="class of every sample (default: unconditional)")
  p_sample.add_argument("--guidance", type=float, default=None, help="guidance weight w")
  p_sample.add_argument("--negative", type=int, default=None,
                        help="negative label to steer away from (needs --guidance)")
  p_sample.add_argument("--seed", type=int, default=0)
  p_sample.add_argument("--out", required=True, help="output .npz (a PNG is written beside it)")
  _add_compile_cache_flag(p_sample)
  p_sample.set_defaults(fn=cmd_sample)
  p_bench = sub.add_parser("bench", help="print a benchmark table")
  p_bench.add_argument("what", choices=BENCHES + ("all",))
  p_bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
  p_bench.add_argument("--out", default=None, help="also write the table to this markdown file")
  _add_compile_cache_flag(p_bench)
  p_bench.set_defaults(fn=cmd_bench)
  args, extra = parser.parse_known_args(argv)
  if getattr(args, "compile_cache", False):  # before anything compiles (see compile_cache.py)
    from ardiff.compile_cache import enable_compilation_cache

    enable_compilation_cache()
  from ardiff.train import Preempted

  try:
    return args.fn(args, extra)
  except ConfigError as e:
    print(f"ardiff: config error: {e}", file=sys.stderr)
    return 2
  except ArdiffError as e:
    print(f"ardiff: {e}", file=sys.stderr)
    return e.exit_code
  except Preempted as e:  # SIGTERM: 143, Ctrl-C (Interrupted): 130
    print(f"ardiff: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:  # Ctrl-C outside the training loop: nothing to save there
    print("ardiff: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
