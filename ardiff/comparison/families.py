"""The families of a comparison: each a process kind that `ardiff.build` makes from config
sections, and the sections it is built from."""

from __future__ import annotations

import dataclasses

import ml_collections


@dataclasses.dataclass(frozen=True)
class Family:
  """One model of the comparison: the process kind `ardiff.build` makes and its sections.

  section: the config's model section; extras: further sections its builder takes;
  section_keys: (model-section field, config field) pairs set on a copy of the section, e.g.
  a patch size that only this family's network takes.
  """

  name: str
  kind: str
  section: str
  extras: tuple[str, ...]
  label: str
  section_keys: tuple[tuple[str, str], ...] = ()

  @property
  def gaussian(self) -> bool:
    return is_gaussian(self.kind)


def is_gaussian(kind: str) -> bool:
  """Whether a builder name (`ardiff.build`) makes a Gaussian diffusion process."""
  return kind.startswith("gaussian")


def chosen(families, names) -> tuple[Family, ...]:
  """The families named in `names`, in the table's (the `families`) order."""
  return tuple(f for f in families if f.name in names)


def model_section(c, family: Family) -> ml_collections.ConfigDict:
  section = c[family.section]
  if family.section_keys:
    section = ml_collections.ConfigDict(
        dict(section.to_dict(), **{field: c[key] for field, key in family.section_keys}))
  return section


def extras(c, family: Family) -> dict:
  return {name: c[name] for name in family.extras}


def build_process(c, family: Family, data):
  from ardiff import build

  return build.build(family.kind, model_section(c, family), data, c.dtype, **extras(c, family))
