"""One grammar for every sampling setting: `name[:steps][:option=value]...`.

    ddpm:1000            DDPM on 1000 strided steps
    ddim:50:eta=0.5      DDIM, 50 steps, eta 0.5 (several options: ddim:50:eta=1:foo=2, or
                         comma-separated in one part: ddpm:1000:noise=0,bar=1)
    raster               raster autoregression, one pixel per step
    ardm:k=4             order-agnostic AR, 4 random pixels per step
    ardm:k=4:order=contiguous   the same network, 4 contiguous (raster) pixels per step
    ardm:dp=8            8 steps whose sizes the dynamic program chose (see
                         `ardiff.processes.autoregressive.budget`)
    oneshot              one prediction of every pixel at once

A part without `=` is the step count (an integer); every other part is `option=value`, the
value read as a Python literal (numbers, tuples) or else kept as a string. Which names and
options exist is each process's business: `Process.sample` and `Process.nfe` reject the rest
with a message that lists what exists.
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Iterable


@dataclasses.dataclass(frozen=True)
class SampleSpec:
  """A parsed sampling setting (hashable, so it can be a static argument of a jitted loop)."""

  name: str
  steps: int | None = None
  options: tuple[tuple[str, Any], ...] = ()

  def get(self, key: str, default: Any = None) -> Any:
    return dict(self.options).get(key, default)

  @property
  def option_dict(self) -> dict[str, Any]:
    return dict(self.options)

  def __str__(self) -> str:
    parts = [self.name] + ([str(self.steps)] if self.steps is not None else [])
    return ":".join(parts + [f"{k}={_format(v)}" for k, v in self.options])

  @property
  def label(self) -> str:
    """A short human label for tables and figures, e.g. 'DDIM 50 (eta=0.5)'."""
    head = self.name.upper() if self.steps is not None else self.name
    steps = f" {self.steps}" if self.steps is not None else ""
    opts = ", ".join(f"{k}={_format(v)}" for k, v in self.options)
    return f"{head}{steps}" + (f" ({opts})" if opts else "")


def _format(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, tuple):
    return "(" + ",".join(_format(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _literal(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_spec(text: "str | SampleSpec") -> SampleSpec:
  """Parse `name[:steps][:option=value]...`; a SampleSpec passes through unchanged.

  A malformed spec is a ValueError whose message is one sentence naming the bad part."""
  if isinstance(text, SampleSpec):
    return text
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"sampling spec must be a non-empty string like 'ddim:50', got {text!r}")
  parts = text.strip().split(":")
  name, steps, options = parts[0], None, {}
  if not name.isidentifier():
    _malformed(text, f"starts with {name!r}, which is not a sampler name (a spec starts with a "
               "name like ddim)" if name else "has no sampler name before its first ':'")
  for part in parts[1:]:
    if not part:
      _malformed(text, "has an empty part (two ':' in a row, or a ':' at the end)")
    if "=" not in part:
      if not _is_integer(part):
        _malformed(text, f"has a part {part!r} that is neither a step count (which must be an "
                   "integer, like 50) nor an option (name=value, like eta=0.5)")
      if steps is not None:
        _malformed(text, f"gives two step counts, {steps} and {part}; give one")
      steps = int(part)
      continue
    for item in _split_options(part):
      key, _, value = item.partition("=")
      if not key:
        _malformed(text, f"has an option {item!r} with no name before its '=' (options look "
                   "like name=value, e.g. eta=0.5)")
      if not key.isidentifier():
        _malformed(text, f"has an option named {key!r}, which is not a name (options look like "
                   "name=value, e.g. eta=0.5)")
      if not value:
        _malformed(text, f"has an option {item!r} with no value after its '=' (options look "
                   "like name=value, e.g. eta=0.5)")
      if key in options:
        _malformed(text, f"gives option {key!r} twice")
      options[key] = _literal(value)
  return SampleSpec(name, steps, tuple(options.items()))


def _malformed(text: str, problem: str) -> None:
  """Raise the one-sentence error for a spec that does not follow the grammar."""
  raise ValueError(f"sampling spec {text!r} {problem}")


def _is_integer(part: str) -> bool:
  try:
    int(part)
  except ValueError:
    return False
  return True


def _split_options(part: str) -> list[str]:
  """Split 'a=1,b=(1,2)' on the commas outside brackets."""
  items, depth, start = [], 0, 0
  for i, ch in enumerate(part):
    depth += ch in "(["
    depth -= ch in ")]"
    if ch == "," and depth == 0:
      items.append(part[start:i])
      start = i + 1
  items.append(part[start:])
  return [item for item in items if item]


def check_spec(spec: SampleSpec, known: dict[str, dict[str, Any]], *, process: str,
               needs_steps: Iterable[str] = ()) -> None:
  """Reject names and options a process does not have, listing what it has.

  known: sampler name -> {option: default}; needs_steps: names that require a step count.
  """
  if spec.name not in known:
    raise ValueError(f"unknown sampler {spec.name!r} for the {process} process; known: "
                     f"{', '.join(sorted(known))}")
  unknown = sorted(set(spec.option_dict) - set(known[spec.name]))
  if unknown:
    have = ", ".join(sorted(known[spec.name])) or "none"
    raise ValueError(f"sampler {spec.name!r} has no option(s) {unknown}; its options: {have}")
  if spec.name in set(needs_steps) and spec.steps is None:
    raise ValueError(f"sampler {spec.name!r} needs a step count, e.g. '{spec.name}:50'")
  if spec.name not in set(needs_steps) and spec.steps is not None:
    raise ValueError(f"sampler {spec.name!r} takes no step count (got {str(spec)!r}); its "
                     f"options: {', '.join(sorted(known[spec.name])) or 'none'}")
