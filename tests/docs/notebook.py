"""Run a docs notebook in a fresh kernel, and tell whether its committed outputs are current.

    python -m tests.docs.notebook docs/quickstart.ipynb    # execute it and write it back

The kernel is this interpreter (`sys.executable`), whatever kernel specs the machine has: the
kernel spec manager is given no spec directories, so jupyter_client falls back to ipykernel's
built-in `python3` spec, which launches `sys.executable -m ipykernel_launcher`. Nothing is
installed into ~/.local or the venv's share/jupyter.

"Current" means a fresh run prints the same text and draws the same figures, cell by cell, up
to what legitimately changes between runs: wall times (`in 59 s`, `steps/s`, `ETA`) are masked,
and decimal numbers may differ by `RTOL`/`ATOL` (another CPU rounds differently, and a training
run amplifies rounding). Integers (step counts, NFE, parameter counts, sample sizes) and every
word must match exactly; so must each figure's description (`<Figure size 900x310 with 3
Axes>`), though not its pixels.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import time

import nbclient
import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "docs", "quickstart.ipynb")
# The variable the quickstart reads its work dir from (it trains a model there).
WORKDIR_VAR = "ARDIFF_QUICKSTART_WORKDIR"
RTOL, ATOL = 0.1, 0.01

# What changes from run to run whatever the code: durations, throughputs, time left.
_VOLATILE = [(re.compile(r"\bin \d+ s\b"), "in <seconds> s"),
             (re.compile(r"\d+(?:\.\d+)? steps/s"), "<rate> steps/s"),
             (re.compile(r"\bETA \S+"), "ETA <time>")]
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def this_interpreters_kernel() -> KernelManager:
  """A manager for ipykernel's built-in python3 kernel on sys.executable (needs ipykernel, a
  test dependency, importable here); kernel specs on disk (~/.local/share/jupyter, JUPYTER_PATH,
  the venv's share/jupyter), which may name another Python, are not consulted."""
  return KernelManager(kernel_name="python3",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def execute(nb: nbformat.NotebookNode, workdir: str, path: str = QUICKSTART) -> float:
  """Runs every cell of `nb` in place (outputs replaced), in a fresh kernel started in the
  notebook's folder with ardiff importable, on the CPU, training into `workdir`; returns the
  seconds it took. Raises nbclient's CellExecutionError (the cell and its traceback) if a cell
  fails."""
  env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
  env.update({WORKDIR_VAR: workdir, "JAX_PLATFORMS": "cpu",
              "PYTHONPATH": os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
  # No per-cell timestamps: they would change the committed file on every refresh.
  # Bounded waits and an immediate kill at the end: a kernel that stops answering fails this
  # run within minutes instead of holding the suite (seen once in CI, not reproduced alone).
  client = nbclient.NotebookClient(nb, km=this_interpreters_kernel(), timeout=300,
                                   startup_timeout=120, shutdown_kernel="immediate",
                                   record_timing=False,
                                   resources={"metadata": {"path": os.path.dirname(path)}})
  start = time.perf_counter()
  client.execute(env=env)
  return time.perf_counter() - start


def _masked(text: str) -> str:
  for pattern, stand_in in _VOLATILE:
    text = pattern.sub(stand_in, text)
  return text


def cell_outputs(cell) -> dict:
  """What a code cell showed, run-independent: its stdout and stderr text (each joined over
  the cell's stream outputs, which the kernel may split anywhere), and one description per
  figure or other rich output, in order."""
  shown = {"stdout": "", "stderr": "", "displays": [], "errors": []}
  for out in cell.outputs:
    if out.output_type == "stream":
      shown[out.name] += _masked(out.text)
    elif out.output_type in ("display_data", "execute_result"):
      data = out.get("data", {})
      shown["displays"].append((sorted(data), _masked(data.get("text/plain", ""))))
    elif out.output_type == "error":
      shown["errors"].append(f"{out.ename}: {out.evalue}")
  return shown


def _numbers_agree(committed: str, fresh: str) -> bool:
  if not any(c in committed + fresh for c in ".eE"):  # integers: exactly
    return int(committed) == int(fresh)
  a, b = float(committed), float(fresh)
  return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


def text_differences(where: str, committed: str, fresh: str) -> list[str]:
  """Where `fresh` differs from `committed` beyond the tolerance: the words and integers must
  be the same, decimals within RTOL/ATOL. One line per difference."""
  if _NUMBER.sub("#", committed) != _NUMBER.sub("#", fresh):
    return [f"{where}: committed {committed!r}, now {fresh!r}"]
  return [f"{where}: {a} committed, now {b} (in {fresh.strip()!r})"
          for a, b in zip(_NUMBER.findall(committed), _NUMBER.findall(fresh))
          if not _numbers_agree(a, b)]


def stale_outputs(committed: nbformat.NotebookNode, fresh: nbformat.NotebookNode) -> list[str]:
  """How the outputs of a fresh run of the same cells differ from the committed ones (empty:
  the committed outputs are current)."""
  old = [c for c in committed.cells if c.cell_type == "code"]
  new = [c for c in fresh.cells if c.cell_type == "code"]
  if [c.source for c in old] != [c.source for c in new[:len(old)]]:
    return ["the fresh run's code cells are not the committed ones"]
  problems = []
  for i, (a, b) in enumerate(zip(old, new), 1):
    shown_a, shown_b = cell_outputs(a), cell_outputs(b)
    for stream in ("stdout", "stderr"):
      problems += text_differences(f"code cell {i} {stream}", shown_a[stream], shown_b[stream])
    if [d[0] for d in shown_a["displays"]] != [d[0] for d in shown_b["displays"]]:
      problems.append(f"code cell {i}: committed figures {shown_a['displays']}, "
                      f"now {shown_b['displays']}")
    else:
      for (_, text_a), (_, text_b) in zip(shown_a["displays"], shown_b["displays"]):
        problems += text_differences(f"code cell {i} figure", text_a, text_b)
    if shown_a["errors"] != shown_b["errors"]:
      problems.append(f"code cell {i}: errors committed {shown_a['errors']}, "
                      f"now {shown_b['errors']}")
  return problems


def main(argv: list[str]) -> int:
  """Executes each notebook named in argv (default: the quickstart) and writes it back with its
  outputs, training into a temporary work dir."""
  for path in argv or [QUICKSTART]:
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as workdir:
      seconds = execute(nb, workdir, os.path.abspath(path))
    nbformat.validate(nb)
    nbformat.write(nb, path)
    print(f"{path}: executed in {seconds:.0f} s and written with its outputs")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
