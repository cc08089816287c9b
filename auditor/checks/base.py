"""The check interface: a rule kind's computation, `run(engine, indices) -> CheckResult`.

Each check kind's parameters are declared torch-free in `auditor.spec.checks`; its
computation registers here under the same name (`@CHECKS.register("accuracy")`). A check
returns the FULL list of failing items, each a `Finding` carrying its `Evidence` (the map
and window it judged, on which image, measured how), so the report draws exactly that; the
session applies the rule's tolerance (`max_failures` / `mostly`).

Checks read the engine through the `AuditEngine` protocol, never by importing it.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from auditor.registry import Registry
from auditor.spec.checks import CHECK_KINDS


class AuditEngine(Protocol):
    """What checks read from the engine (`auditor.engine.Engine` implements it)."""

    classes: tuple[str, ...]
    settings: Any
    attribution: Any

    @property
    def predictions(self) -> Any: ...            # logits, labels, predicted, probs, correct

    @property
    def train_labels(self) -> torch.Tensor: ...

    def influence(self, indices: torch.Tensor) -> Any: ...                  # proponents / opponents TopK

    def tfa(self, indices: torch.Tensor, k: int | None = None) -> list[Any]: ...

    def tfa_pairs(self, pairs: list[tuple[int, int]]) -> torch.Tensor: ...       # (p, C, H, W) signed

    @property
    def train_losses(self) -> torch.Tensor: ...                                  # (n_train,) own-label loss

    def grad_cos(self, train: torch.Tensor, test: torch.Tensor) -> torch.Tensor: ...   # (n, m) projected

    def neighbours(self, k: int, layer: str | None = None) -> Any: ...   # training images' label-voting neighbours

    def saliency(self, indices: torch.Tensor, method: str | None = None, use_var: bool = False) -> Any: ...

    def test_images(self, indices: torch.Tensor) -> torch.Tensor: ...                # (b, C, H, W) model inputs

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def logits(self, images: torch.Tensor) -> torch.Tensor: ...                   # (b, classes), any images

    def attribute(self, images: torch.Tensor, classes: torch.Tensor, method: str | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Evidence:
    """What a check measured for one finding.

    `image` is the picture the map lies on (`("test", i)` or `("train", j)`); `magnitude (H, W)`
    is the channel-reduced |attribution| the check judged and `signed (C, H, W)` the signed map, when
    the finding rests on one; `window` `(row, col, side)` and `region` (a named region or a
    box in fractions) are what was measured on it; `related` lists the other images that
    explain the finding as `(kind, index, score)` (e.g. proponents, or the test examples a
    training image affects).
    """

    source: str
    image: tuple[str, int]
    _: KW_ONLY                                      # the rest by keyword: what each value is stays readable
    method: str | None = None
    magnitude: torch.Tensor | None = field(default=None, repr=False)
    signed: torch.Tensor | None = field(default=None, repr=False)
    window: tuple[int, int, int] | None = None
    region: str | tuple[float, ...] | None = None
    related: tuple[tuple[str, int, float], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The evidence without its tensors (the panel shows those)."""
        return {"source": self.source, "method": self.method, "image": {"kind": self.image[0], "index": self.image[1]},
                "window": list(self.window) if self.window else None,
                "region": list(self.region) if isinstance(self.region, tuple) else self.region,
                "related": [{"kind": k, "index": i, "score": s} for k, i, s in self.related]}


@dataclass(frozen=True)
class Finding:
    """One failing item: a test example, a training image or a class, with its numbers and evidence.

    `path` is the image's file when the dataset knows it (the session fills it in).
    """

    index: int
    value: float
    kind: str = "test"
    details: dict[str, Any] = field(default_factory=dict)
    evidence: Evidence | None = field(default=None, compare=False)
    path: str | None = None

    def row(self) -> dict[str, Any]:
        return {self.kind: self.index, "value": round(self.value, 6), **self.details,
                **({"file": self.path} if self.path else {})}


@dataclass
class CheckResult:
    """What a check observed: the metric, its threshold, and every failing item.

    `passed` is None for per-example checks: the session decides from the rule's tolerance.
    `inconclusive` says why the check could not judge (e.g. too few errors for its statistic):
    the rule is then reported inconclusive, never passed.
    """

    metric: str
    value: float
    threshold: float
    comparison: str
    n_selected: int
    failures: list[Finding]
    passed: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    inconclusive: str | None = None


class Check(abc.ABC):
    """A rule kind's computation. Subclasses set `Params` (from `auditor.spec.checks`) and
    implement `run`; name, `per_example` and description come from the parameters."""

    Params: ClassVar[type]

    def __init__(self, params: Any) -> None:
        self.params = params

    @property
    def name(self) -> str:
        return self.Params.check

    @property
    def per_example(self) -> bool:
        return self.Params.per_example

    def evaluate(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        """`run` on a non-empty selection; an empty one measures nothing (`n_selected` 0)."""
        if len(indices) == 0:
            return CheckResult(self.name, float("nan"), float("nan"), "", 0, [],
                               extra={"note": "the selection is empty"})
        return self.run(engine, indices)

    @abc.abstractmethod
    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        """Evaluate the check on the selected test examples `indices` (1-D long tensor, not empty)."""


CHECKS: Registry[type[Check]] = Registry("check", names=lambda: CHECK_KINDS.names)


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: the computation of the check kind its `Params` declare."""
    return CHECKS.register(cls.Params.check)(cls)


def worst_measured(values: torch.Tensor, lowest: bool = False) -> float:
    """A rule's metric: the highest finite value of `values` (the lowest when `lowest`), NaN when
    none could be measured (an empty map, a NaN score). The one NaN policy every check's metric
    follows; the NaN items themselves are findings (`worst_first` puts them first)."""
    finite = values[torch.isfinite(values)]
    if len(finite) == 0:
        return float("nan")
    return float(finite.min() if lowest else finite.max())


def worst_first(findings: Iterable[Finding], lowest: bool = False) -> list[Finding]:
    """Findings most severe first: those whose value is NaN (nothing could be measured: the most
    urgent), then the highest value (the lowest when `lowest`), ties in the order given. The one
    order every check's failing list uses."""
    findings = list(findings)
    measured = sorted((f for f in findings if f.value == f.value), key=lambda f: f.value if lowest else -f.value)
    return [f for f in findings if f.value != f.value] + measured


def example_details(engine: AuditEngine, index: int) -> dict[str, str]:
    """`label` and `predicted` class names of test example `index`."""
    p = engine.predictions
    return {"label": engine.classes[int(p.labels[index])], "predicted": engine.classes[int(p.predicted[index])]}


def ranked(engine: AuditEngine, indices: torch.Tensor, k: int, side: str = "proponents"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` proponents (or opponents) of test examples: `(m, k)` train indices and scores."""
    rows = getattr(engine.influence(indices), side)
    return rows.indices[:, :k], rows.scores[:, :k]


def related_train(train: torch.Tensor, scores: torch.Tensor) -> tuple[tuple[str, int, float], ...]:
    """`(k,)` training indices and scores as evidence entries."""
    return tuple(("train", int(j), round(float(s), 6)) for j, s in zip(train.tolist(), scores.tolist()))
