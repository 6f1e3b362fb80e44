"""What an experiment reports: results tables (``tables``) and figures (``plots``).

``from ardiff.report import write_results, markdown_table`` for the tables;
``from ardiff.report import plots`` for the figures. ``plots`` (and so matplotlib) is imported
only when asked for, so code that writes tables alone never loads matplotlib.
"""

from __future__ import annotations

import importlib

from ardiff.report.tables import markdown_table, write_results

__all__ = ["markdown_table", "plots", "tables", "write_results"]


def __getattr__(name: str):
  # `import ardiff.report as report; report.plots.line_plot(...)` works without importing
  # matplotlib up front (`from ardiff.report import plots` imports the submodule anyway).
  if name == "plots":
    return importlib.import_module("ardiff.report.plots")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
