"""One registry helper for every replaceable stage (checks, saliency methods, projections,
gradient computers): a string → implementation map, so YAML can name an implementation.

The registries are declared here, torch-free, with the names they accept: the spec validates
YAML against `names` without importing any implementation, and an implementation module
registers under a declared name (`@SALIENCY_METHODS.register("gradient")`). A shared contract
test checks that every declared name has an implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from auditor.errors import AuditError
from auditor.suggest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Implementations of one stage by name. `names` (a tuple, or a callable giving one) fixes
    the accepted names up front; without it, whatever is registered is accepted."""

    def __init__(self, kind: str, names: Iterable[str] | Callable[[], Iterable[str]] | None = None) -> None:
        self.kind = kind
        self._declared = names if callable(names) or names is None else tuple(names)
        self._items: dict[str, T] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The accepted names, in declaration (else registration) order."""
        declared = self._declared() if callable(self._declared) else self._declared
        return tuple(declared) if declared is not None else tuple(self._items)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: make the implementation available under `name` (a declared name, once)."""
        def add(item: T) -> T:
            if name not in self.names and self._declared is not None:
                raise ValueError(f"{self.kind} '{name}' is not declared in auditor.registry")
            if name in self._items and _origin(self._items[name]) != _origin(item):
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = item
            return item
        return add

    def get(self, name: str, where: Any = None) -> T:
        """The implementation called `name`; unknown names raise an error with a suggestion
        (`where.error(...)` when a YAML position is given, else an `AuditError`)."""
        if name in self._items:
            return self._items[name]
        message = (f"unknown {self.kind} '{name}'" if name not in self.names
                   else f"{self.kind} '{name}' has no implementation loaded")
        fix = did_you_mean(name, self.names, f"available {self.kind}s")
        raise where.error(message, fix=fix) if where is not None else AuditError(message, fix=fix)

    def missing(self) -> tuple[str, ...]:
        """Declared names with no implementation registered (the contract test wants none)."""
        return tuple(n for n in self.names if n not in self._items)


SALIENCY_METHODS: Registry[Any] = Registry(
    "saliency method", ("gradient", "input_x_gradient", "integrated_gradients", "guided_backprop", "grad_cam"))
PROJECTIONS: Registry[Any] = Registry("projection", ("sparse", "rademacher", "factored"))
GRADIENT_COMPUTERS: Registry[Any] = Registry("gradient computer", ("func", "hooks"))


def _origin(item: Any) -> str:
    """Where an implementation is defined: a module imported again (pytester, importlib.reload)
    re-registers the same definition, which is not a second implementation."""
    return f"{getattr(item, '__module__', '')}.{getattr(item, '__qualname__', repr(item))}"
