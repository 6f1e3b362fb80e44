"""Where a digits train step's time goes, per XLA op, from a jax.profiler trace.

    python tools/profile_step.py raster        # digits_ar's raster AR transformer
    python tools/profile_step.py unet          # digits_diffusion's UNet
    python tools/profile_step.py raster --top 40

Compiles the step `ardiff bench train` times (docs/results.md's digits config, `image_config
("small")`), runs it a few times under `jax.profiler.trace`, and sums the trace's XLA:CPU thunk
events (each a fusion, dot, copy or loop of the compiled program) over the runs and the
intra-op threads. Prints the total, a split by kind (matmul/conv, elementwise, copy/transpose,
while loops), and the largest groups by model part, named from the compiled HLO's op_name
metadata (fwd/bwd: the forward or the transposed, i.e. backward, computation).

Caveats (measured): the thunk times are summed over the intra-op threads, so they exceed the
wall time; on a loaded shared CPU each op stretches with the load (the total moved 213-367 ms
per raster step between two runs of the same program at load ~7), so read the shares, not the
milliseconds. The trace is read through jax's private `ProfileData`; CPU only.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import tempfile

RUNS = 5


def compiled_step(which: str):
  from ardiff import build
  from ardiff.bench.train import compile_train_step
  from ardiff.data import load_dataset
  from ardiff.data.levels import levels_to_unit, to_tokens
  from ardiff.presets import image_config

  c = image_config("small", ar=True, diffusion=True)
  data = load_dataset("digits")
  if which == "raster":
    process, x = build.build("raster", c.ar, data, c.dtype), to_tokens(data.x_train)
  else:
    process = build.build("gaussian", c.unet, data, c.dtype, diffusion=c.diffusion)
    x = levels_to_unit(data.x_train, data.num_levels)
  return compile_train_step(process, x, data.y_train, c.train.batch_size)


def thunk_times(step, runs: int) -> collections.Counter:
  """Nanoseconds per thunk name, summed over `runs` traced runs and the XLA:CPU threads."""
  import jax
  from jax._src.profiler import ProfileData

  run = lambda: jax.block_until_ready(step.compiled(step.state, step.arrays, step.key))
  run()  # warm: the trace holds steady-state runs only
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      for _ in range(runs):
        run()
    data = ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
  out = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if line.name.startswith("tf_XLAEigen"):  # the intra-op threads that run the thunks
        for ev in line.events:
          if not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
            out[ev.name] += ev.duration_ns
  return out


def kind(name: str) -> str:
  if name.startswith(("ynn_fusion", "dot", "convolution", "custom-call")):
    return "matmul/conv"
  if "copy" in name or "transpose" in name:
    return "copy/transpose"
  return "while loops" if name.startswith("while") else "elementwise/other"


def model_part(op_name: str) -> str:
  """'fwd'/'bwd' and the model's layer path, without the block index (blocks add up)."""
  side = "bwd" if "transpose(jvp" in op_name else "fwd"
  path = re.sub(r"jit\(train_step\)/|transpose\(|jvp\(|\)|block_\d+[/.]", "", op_name)
  return f"{side} {'/'.join(path.split('/')[:3])}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model", choices=("raster", "unet"))
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args(argv)
  step = compiled_step(args.model)
  op_names = dict(re.findall(r"^\s+(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]*)\"",
                             step.compiled.as_text(), re.M))
  times = thunk_times(step, RUNS)
  total = sum(times.values())
  print(f"{args.model}: {total / RUNS / 1e6:.1f} ms of thunks per step (summed over threads)")
  for title, key in (("by kind", kind),
                     ("by model part", lambda n: f"{model_part(op_names.get(n, '?'))} "
                                                 f"[{kind(n)}]")):
    groups = collections.Counter()
    for name, ns in times.items():
      groups[key(name)] += ns
    print(f"\n{title}:")
    for group, ns in groups.most_common(args.top):
      print(f"  {ns / RUNS / 1e6:8.2f} ms  {ns / total:6.1%}  {group}")


if __name__ == "__main__":
  main()
