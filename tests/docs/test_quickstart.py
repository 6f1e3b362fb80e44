"""docs/quickstart.ipynb is committed executed, runs from top to bottom in a fresh kernel, and
its committed outputs are what a fresh run shows (tests/docs/notebook.py says what "the same"
allows). The model trains into a temporary work dir (ARDIFF_QUICKSTART_WORKDIR), so the test
neither reads nor writes runs/. Refresh the outputs with `python -m tests.docs.notebook`.
"""

import copy
import os
import sys

import nbformat
import pytest

from tests.docs.notebook import QUICKSTART, cell_outputs, execute, stale_outputs

PNG = "iVBORw0KGgo="  # a figure's bytes: only their presence is compared

REFRESH = "refresh them: python -m tests.docs.notebook docs/quickstart.ipynb"


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stored_executed_top_to_bottom():
  """Every code cell ran, once, in order, in one kernel, without an error; the figures are in
  the file, so the notebook reads on GitHub without running it."""
  nb = nbformat.read(QUICKSTART, as_version=4)
  nbformat.validate(nb)
  code = _code_cells(nb)
  assert code
  assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), REFRESH
  shown = [cell_outputs(c) for c in code]
  assert not [s["errors"] for s in shown if s["errors"]]
  figures = [mimes for s in shown for mimes, _ in s["displays"] if "image/png" in mimes]
  assert len(figures) >= 4, f"expected the notebook's 4 figures, got {len(figures)}; {REFRESH}"
  assert all(c.outputs for c in code[:3]), "the first cells print what they set up"


def _one_cell_notebook(stdout: str, stderr: str, figures: int = 1, source: str = "train()"):
  cell = nbformat.v4.new_code_cell(source, execution_count=1, outputs=[
      nbformat.v4.new_output("stream", name="stderr", text=stderr),
      nbformat.v4.new_output("stream", name="stdout", text=stdout),
      *[nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain":
                                                     "<Figure size 900x310 with 3 Axes>"})
        for _ in range(figures)]])
  return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# a"), cell])


STDOUT = "trained in 59 s\nmean [-0.006 -0.015]  cov 0.271\n"
STDERR = "step 100/1500  loss 0.4823  12.7 steps/s  ETA 1m49s\n"
COMMITTED = _one_cell_notebook(STDOUT, STDERR)
RERUN = {"59 s": "7 s", "-0.006 -0.015": "-0.007 -0.014", "0.271": "0.272", "0.4823": "0.4824",
         "12.7 steps/s": "131.0 steps/s", "1m49s": "0m02s"}


@pytest.mark.parametrize("changes, figures, source, stale", [
    (RERUN, 1, "train()", False),  # another run, another machine: times, rates, last digits
    ({"0.271": "0.35"}, 1, "train()", True),  # a decimal far from the committed one
    ({"/1500": "/1400"}, 1, "train()", True),  # an integer (the step budget) 7% off
    ({"mean": "median"}, 1, "train()", True),  # a word
    ({}, 0, "train()", True),  # a figure gone
    ({}, 1, "train(steps=9)", True),  # the code edited
], ids=["rerun", "decimal", "integer", "word", "figure", "code"])
def test_stale_outputs_ignore_times_and_rounding_only(changes, figures, source, stale):
  stdout, stderr = STDOUT, STDERR
  for old, new in changes.items():
    stdout, stderr = stdout.replace(old, new), stderr.replace(old, new)
  problems = stale_outputs(COMMITTED, _one_cell_notebook(stdout, stderr, figures, source))
  assert bool(problems) == stale, problems


@pytest.mark.slow
def test_quickstart_runs_and_its_committed_outputs_are_current(tmp_path):
  committed = nbformat.read(QUICKSTART, as_version=4)
  nb = copy.deepcopy(committed)
  # A last cell of our own: which interpreter ran the notebook.
  nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
  seconds = execute(nb, str(tmp_path / "work"))  # raises CellExecutionError on a failing cell
  ran_with = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
  assert os.path.realpath(ran_with) == os.path.realpath(sys.executable)
  assert os.listdir(tmp_path / "work" / "models"), "trained into the temporary work dir"
  problems = stale_outputs(committed, nb)
  assert not problems, "docs/quickstart.ipynb's committed outputs are stale:\n" + "\n".join(
      problems) + f"\n{REFRESH}"
  print(f"quickstart.ipynb ran in {seconds:.0f} s")
