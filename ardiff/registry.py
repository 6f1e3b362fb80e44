"""A tiny name -> object registry, so that a new sampler or process is one file plus one line."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to objects; unknown names fail with the list of known ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    def add(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj

    return add

  def get(self, name: str) -> T:
    try:
      return self._items[name]
    except KeyError:
      known = ", ".join(sorted(self._items)) or "(none)"
      raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
