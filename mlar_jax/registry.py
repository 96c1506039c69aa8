"""Name registries: a config string selects a constructor.

Every pluggable piece (backbones, heads, losses, datasets) registers itself
under a name, so `config.model.backbone = "resnet3d_tiny"` is the only place a
choice is made, and an unknown name fails with the list of known ones.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
  """A mapping from names to constructors, filled by a decorator."""

  def __init__(self, kind: str):
    self.kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator registering `fn` under `name`."""

    def wrap(fn: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice.")
      self._entries[name] = fn
      return fn

    return wrap

  def get(self, name: str) -> T:
    """Returns the constructor for `name`; raises KeyError naming the choices."""
    try:
      return self._entries[name]
    except KeyError:
      raise KeyError(
        f"Unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
      ) from None

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries
