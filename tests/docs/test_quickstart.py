"""docs/quickstart.ipynb runs from top to bottom in a fresh kernel and draws its figures.

The kernel is this interpreter (`sys.executable`), whatever kernel specs the machine has: the
kernel spec manager is given no spec directories, so jupyter_client falls back to ipykernel's
built-in `python3` spec, which launches `sys.executable -m ipykernel_launcher`. Nothing is
installed into ~/.local or the venv's share/jupyter. The model trains into a temporary work
dir (ARDIFF_QUICKSTART_WORKDIR), so the test neither reads nor writes runs/.
"""

import os
import sys
import time

import nbclient
import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "docs", "quickstart.ipynb")


def this_interpreters_kernel() -> KernelManager:
  """A manager for ipykernel's built-in python3 kernel on sys.executable (needs ipykernel, a
  test dependency, importable here); kernel specs on disk (~/.local/share/jupyter, JUPYTER_PATH,
  the venv's share/jupyter), which may name another Python, are not consulted."""
  return KernelManager(kernel_name="python3",
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code
  assert all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_quickstart_runs_and_draws_figures(tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  # A last cell of our own: which interpreter ran the notebook.
  nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.executable)"))
  env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
  env.update(ARDIFF_QUICKSTART_WORKDIR=str(tmp_path / "work"), JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
  client = nbclient.NotebookClient(nb, km=this_interpreters_kernel(), timeout=600,
                                   resources={"metadata": {"path": os.path.join(ROOT, "docs")}})
  start = time.perf_counter()
  client.execute(env=env)  # raises CellExecutionError, with the cell and traceback, on an error
  seconds = time.perf_counter() - start
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) >= 4, f"expected the notebook's 4 figures, got {len(images)} images"
  ran_with = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
  assert os.path.realpath(ran_with) == os.path.realpath(sys.executable)
  assert os.listdir(tmp_path / "work" / "models"), "trained into the temporary work dir"
  print(f"quickstart.ipynb ran in {seconds:.0f} s")
