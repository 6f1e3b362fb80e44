"""Layers that only point down: every import inside `ardiff/` (read from the source with `ast`,
function-level imports included) goes to a unit of the same layer or a lower one, and the
units' import graph has no cycle.

A unit is a direct child of `ardiff/` (a module, or a package with everything in it). LAYERS
lists them from the bottom up; a new module joins the lowest layer whose units it needs, so
what it may import is plain from the list.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "ardiff")

LAYERS = (
    # the one error hierarchy and the registry: nothing of ardiff below them
    ("errors", "registry"),
    # files, the console, dtypes, the compilation cache, hosts; `configs` is the override
    # parser and validation only (no section schemas: those are `presets`, far above)
    ("storage", "console", "precision", "compile_cache", "threefry_cpu", "distributed", "configs",
     "sigterm"),
    # work dirs, checkpoints, device meshes, figures and tables, TensorBoard, sample files
    ("workdir", "checkpoints", "parallel", "report", "summaries", "sample_cache"),
    ("kernels",),
    # networks and datasets (neither knows the other)
    ("models", "data"),
    # what `ardiff run` checks on this machine before it writes: devices, folders, data
    ("preflight",),
    # removal processes (networks injected) and sample-quality metrics
    ("processes", "metrics"),
    ("train",),
    # config section -> process: the model sections (defaults, validation) and the builders
    ("model_sections", "build"),
    # what experiments assemble their configs from: scales, the train section, the dataset
    ("presets",),
    # cached training and loading; what experiment files share besides it; a trained model's
    # data rebuilt from its work dir's config
    ("model_cache", "experiment_helpers", "model_data"),
    # the matched-compute comparison of model families: budget, training, scores, tables
    ("comparison",),
    # programs exported for accelerators from a CPU (train steps and samplers, by builder)
    ("lowering",),
    # a trained model's samples scored by the experiments' metrics, with floors
    ("evaluation",),
    # entry points
    ("sampling_cli", "eval_cli", "bench", "cli"),
)
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str | None:
  """The unit of an `ardiff.x.y` module name (None: not ardiff's, or the package root)."""
  parts = module.split(".")
  return parts[1] if parts[0] == "ardiff" and len(parts) > 1 else None


def _imports(path: str) -> set[str]:
  """The ardiff modules a file imports (absolute imports; `from ardiff import x` names x)."""
  found = set()
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      if node.module == "ardiff":
        found.update(f"ardiff.{alias.name}" for alias in node.names)
      else:
        found.add(node.module)
  return {m for m in found if _unit(m)}


def _edges() -> dict[str, dict[str, str]]:
  """{unit: {imported unit: the first file (relative to ardiff/) that imports it}}."""
  edges: dict[str, dict[str, str]] = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, PACKAGE)
      unit = rel.split(os.sep)[0].removesuffix(".py")
      if unit == "__init__":
        continue
      for module in _imports(path):
        if _unit(module) != unit:
          edges.setdefault(unit, {}).setdefault(_unit(module), rel)
  return edges


def test_every_unit_has_a_layer():
  units = {n.removesuffix(".py") for n in os.listdir(PACKAGE)
           if (n.endswith(".py") and n != "__init__.py")
           or os.path.isfile(os.path.join(PACKAGE, n, "__init__.py"))}
  assert sorted(units - set(LAYER)) == [], "add the new unit to LAYERS"
  assert sorted(set(LAYER) - units) == [], "LAYERS names a unit that is gone"


def test_no_import_from_a_lower_layer_to_a_higher_one():
  upward = [f"{where} ({unit}, layer {LAYER[unit]}) imports {target} (layer {LAYER[target]})"
            for unit, targets in _edges().items() for target, where in targets.items()
            if LAYER[target] > LAYER[unit]]
  assert upward == []


def test_units_import_each_other_without_cycles():
  edges = {unit: set(targets) for unit, targets in _edges().items()}
  done: set[str] = set()

  def visit(unit: str, path: tuple[str, ...]) -> None:
    if unit in path:
      pytest.fail("import cycle: " + " -> ".join(path[path.index(unit):] + (unit,)))
    if unit in done:
      return
    for target in sorted(edges.get(unit, ())):
      visit(target, path + (unit,))
    done.add(unit)

  for unit in sorted(edges):
    visit(unit, ())
