"""What the README and the docs say about the code is what the code does: the processes and
samplers that exist, the kinds that take tokens, the protocol's signature, and links that lead
somewhere. Read from the registries, so a new process or sampler that the docs miss fails here.
"""

import inspect
import os
import re

import pytest

from ardiff import build
from ardiff.processes.base import Process
from ardiff.processes.gaussian.samplers import SAMPLERS
from ardiff.processes.token_samplers import TOKEN_SAMPLERS
from tests.processes.test_contract import tiny_images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = build.BUILDERS.names()


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return f.read()


def _named(name: str, text: str) -> bool:
  """`name` appears as code: `name`, or a spec that starts with it (`ardm:k=4`)."""
  return re.search(rf"`{re.escape(name)}[`:]", text) is not None


def test_readme_table_names_every_process_and_sampler():
  """The table at the top of the README (before the first section) names every builder kind
  but the one-shot baseline, and every diffusion solver and token sampler."""
  readme = _read("README.md")
  top = readme.split("\n## ", 1)[0]
  table = "\n".join(line for line in top.splitlines() if line.startswith("|"))
  missing = [n for n in [*KINDS, *SAMPLERS.names(), *TOKEN_SAMPLERS.names()]
             if n != "oneshot" and not _named(n, table)]
  assert missing == [], "README's table misses " + ", ".join(missing)
  assert _named("oneshot", top)
  solvers = [n for n in SAMPLERS.names() if n != "ddpm_learned"]  # learned variances only
  words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
  assert f"{words[len(solvers)]} solvers" in table


def test_build_docstring_lists_every_kind():
  doc = build.build.__doc__
  assert [k for k in KINDS if not re.search(rf"^\s+{k}\s", doc, re.M)] == []


def test_adding_a_process_says_which_kinds_take_tokens():
  """docs/adding_a_process.md's list of the kinds that take tokens and of those that take
  continuous inputs is what each builder's process declares (`inputs`)."""
  page = _read("docs", "adding_a_process.md")
  data = tiny_images()
  inputs = {}
  for kind in KINDS:
    section, extra, _ = build.BUILDERS.get(kind).example()
    inputs[kind] = build.build(kind, section, data, **extra).inputs
  said = re.search(r"kinds take tokens today[^:]*:(.*?)\. Four take continuous inputs:(.*?)\.\n",
                   page, re.S)
  assert said, "the sentence naming the token kinds is gone from adding_a_process.md"
  tokens, continuous = (set(re.findall(r"`(\w+)`", part)) for part in said.groups())
  assert tokens == {k for k, v in inputs.items() if v == "tokens"}
  assert continuous == {k for k, v in inputs.items() if v == "continuous"}


def test_adding_a_process_says_mesh_is_in_the_protocol():
  assert "mesh" in inspect.signature(Process.sample).parameters
  page = _read("docs", "adding_a_process.md")
  assert "`mesh=` is part of the `Process` protocol's `sample` signature" in page
  assert "not in the `Process` protocol" not in page


DOCS = ["README.md"] + [os.path.relpath(os.path.join(folder, name), ROOT)
                        for folder, _, names in os.walk(os.path.join(ROOT, "docs"))
                        for name in sorted(names) if name.endswith(".md")]


@pytest.mark.parametrize("page", DOCS)
def test_relative_links_lead_to_files(page):
  text = _read(page)
  targets = re.findall(r"\]\(([^)\s]+)\)", text)
  local = [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t.split("#")[0]]
  where = os.path.dirname(os.path.join(ROOT, page))
  assert [t for t in local if not os.path.exists(os.path.join(where, t))] == []


def test_readme_is_a_front_door():
  """Short, in the order a newcomer needs it, with the details one link away."""
  readme = _read("README.md")
  assert len(readme.splitlines()) < 250
  headings = [h.lower() for h in re.findall(r"^## (.*)$", readme, re.M)]
  order = ["install", "main job", "sample", "evaluate", "extend", "scale", "test"]
  found = [next((i for i, h in enumerate(headings) if word in h), None) for word in order]
  assert None not in found and found == sorted(found), headings
  for page in ("docs/results.md", "docs/scaling.md", "docs/benchmarks/README.md",
               "docs/sampling.md", "docs/runs.md", "docs/layout.md", "docs/quickstart.ipynb"):
    assert f"]({page})" in readme, page
