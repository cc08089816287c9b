"""The check interface: a rule kind with a typed parameter schema and a `run(engine, indices)`.

Implementations: see `auditor.checks` (registry). Each check computes a per-example (or
aggregate) metric on the engine's results and returns a `CheckResult` with the FULL list of
failing examples; the runner applies the rule's tolerance (`max_failures` / `mostly`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch

    from auditor.engine import Engine


@dataclass(frozen=True)
class Finding:
    """One failing item: a test example, a training image or a class, with its numbers."""

    index: int
    value: float
    kind: str = "test"
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {self.kind: self.index, "value": round(self.value, 6), **self.details}


@dataclass
class CheckResult:
    """What a check observed: the metric, its threshold, and every failing item.

    `passed` is None for per-example checks: the runner decides from the rule's tolerance.
    """

    metric: str
    value: float
    threshold: float
    comparison: str
    n_selected: int
    failures: list[Finding]
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def require_top_k(engine: Engine, k: int) -> int:
    """`k` itself, or an error when the engine keeps fewer than `k` proponents per example."""
    from auditor.errors import AuditError

    top_k = engine.attribution.top_k
    if k > top_k:
        raise AuditError(f"k={k} exceeds settings.attribution.top_k={top_k}", field="k",
                         fix=f"lower k or raise settings.attribution.top_k to {k}")
    return k


class Check(abc.ABC):
    """A rule kind. Subclasses set `name`, a frozen `Params` dataclass, and implement `run`."""

    name: ClassVar[str]
    Params: ClassVar[type]
    per_example: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def __init__(self, params: Any) -> None:
        self.params = params

    @abc.abstractmethod
    def run(self, engine: Engine, indices: torch.Tensor) -> CheckResult:
        """Evaluate the check on the selected test examples `indices` (1-D long tensor)."""
