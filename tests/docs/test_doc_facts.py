"""What the docs say about the code is what the code does: the kinds that exist and those that
take tokens, the protocol's signature. Read from the registries, so a new process that the docs
miss fails here.
"""

import inspect
import os
import re

from ardiff import build
from ardiff.processes.base import Process
from tests.processes.test_contract import tiny_images

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KINDS = build.BUILDERS.names()


def _read(*parts: str) -> str:
  with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
    return f.read()


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
