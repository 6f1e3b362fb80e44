"""Command line: `ardiff run <experiment.py> --workdir=DIR [--config.key=value ...]`,
`ardiff bench <what>`."""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time

from ardiff.config import ConfigError, apply_overrides, load_experiment, to_json

BENCHES = ("samplers", "ar", "diffusion", "train")


def _split_overrides(extra: list[str]) -> list[str]:
  out = []
  for item in extra:
    if not item.startswith("--config."):
      raise ConfigError(f"unexpected argument {item!r}; config overrides look like --config.key=value")
    out.append(item[len("--config."):])
  return out


def get_experiment_config(path: str, overrides: list[str]):
  """The experiment's config with overrides. `scale=...` is passed to get_config(scale) first,
  so that a scale's defaults apply and explicit overrides still win."""
  module = load_experiment(path)
  scale = [o.split("=", 1)[1] for o in overrides if o.startswith("scale=")]
  params = inspect.signature(module.get_config).parameters
  config = module.get_config(scale[-1]) if scale and "scale" in params else module.get_config()
  config = apply_overrides(config, [o for o in overrides if not o.startswith("scale=")])
  if hasattr(module, "validate"):
    module.validate(config)
  return module, config


def cmd_run(args, extra) -> int:
  from ardiff.distributed import maybe_initialize

  maybe_initialize()
  module, config = get_experiment_config(args.experiment, _split_overrides(extra))
  workdir = args.workdir or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.experiment))[0])
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(to_json(config))
  start = time.perf_counter()
  module.run(config, workdir)
  print(f"done in {time.perf_counter() - start:.0f}s; results in {workdir}", file=sys.stderr)
  return 0


def cmd_bench(args, extra) -> int:
  if extra:
    raise ConfigError(f"unexpected arguments {extra}")
  from ardiff import bench

  bench.run(args.what, quick=args.quick, out=args.out)
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="ardiff", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  p_run = sub.add_parser("run", help="run an experiment file")
  p_run.add_argument("experiment", help="path to an experiment file, e.g. experiments/spiral.py")
  p_run.add_argument("--workdir", default=None, help="output directory (default runs/<name>)")
  p_run.set_defaults(fn=cmd_run)
  p_bench = sub.add_parser("bench", help="print a benchmark table")
  p_bench.add_argument("what", choices=BENCHES + ("all",))
  p_bench.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
  p_bench.add_argument("--out", default=None, help="also write the table to this markdown file")
  p_bench.set_defaults(fn=cmd_bench)
  args, extra = parser.parse_known_args(argv)
  from ardiff.train import Preempted

  try:
    return args.fn(args, extra)
  except ConfigError as e:
    print(f"ardiff: config error: {e}", file=sys.stderr)
    return 2
  except Preempted as e:
    print(f"ardiff: {e}", file=sys.stderr)
    return 143  # the conventional exit status after SIGTERM


if __name__ == "__main__":
  sys.exit(main())
