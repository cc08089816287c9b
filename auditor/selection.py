"""Which test examples a rule looks at: the `on:` field.

Forms: `all`, `misclassified`, `correct`, `{class: NAME}`, `{predicted: NAME}`,
`{sample: N}` (seeded random subset), `{indices: [i, ...]}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from auditor.schema import Where, describe, expect_mapping, suggest

if TYPE_CHECKING:
    import torch

SIMPLE = ("all", "misclassified", "correct")
KEYED = ("class", "predicted", "sample", "indices")


@dataclass(frozen=True)
class Selection:
    """A parsed `on:` value. `value` is a class name/index, a sample size or an index tuple."""

    kind: str
    value: Any = None
    where: Where | None = None

    def describe(self) -> str:
        if self.kind in SIMPLE:
            return self.kind
        if self.kind == "indices":
            return f"indices ({len(self.value)})"
        return f"{self.kind}: {self.value}"


def parse_selection(raw: Any, where: Where) -> Selection:
    """Validate an `on:` value from YAML."""
    if isinstance(raw, str):
        if raw in SIMPLE:
            return Selection(raw, where=where)
        if raw in KEYED:
            raise where.error(f"'{raw}' needs a value", fix=f"write `on: {{{raw}: ...}}`")
        near = suggest(raw, SIMPLE + KEYED)
        raise where.error(f"unknown selection '{raw}'",
                          fix=f"did you mean '{near}'?" if near else f"use one of: {', '.join(SIMPLE + KEYED)}")
    mapping = expect_mapping(raw, where)
    if len(mapping) != 1:
        raise where.error(f"a selection mapping has exactly one key, got {sorted(mapping) or 'none'}",
                          fix=f"use one of: {', '.join(KEYED)}")
    (kind, value), = mapping.items()
    here = where.child(kind, mapping.line_of(kind))
    if kind not in KEYED:
        near = suggest(kind, KEYED)
        raise here.error(f"unknown selection key '{kind}'",
                         fix=f"did you mean '{near}'?" if near else f"use one of: {', '.join(KEYED)}")
    if kind in ("class", "predicted"):
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise here.error(f"expected a class name or index, got {describe(value)}")
    elif kind == "sample":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise here.error(f"expected a positive integer, got {describe(value)}")
    else:
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise here.error("expected a list of non-negative integers", fix="write `indices: [0, 5, 17]`")
        value = tuple(value)
    return Selection(kind, value, where=here)


def class_index(name: str | int, classes: tuple[str, ...], where: Where | None) -> int:
    """Resolve a class given by name or index against the dataset's class names."""
    if isinstance(name, int):
        if 0 <= name < len(classes):
            return name
        message, fix = f"class index {name} is out of range", f"use 0..{len(classes) - 1}"
    elif name in classes:
        return classes.index(name)
    else:
        near = suggest(name, classes)
        message = f"unknown class '{name}'"
        fix = f"did you mean '{near}'?" if near else f"classes: {', '.join(classes)}"
    if where is None:
        raise ValueError(f"{message}; {fix}")
    raise where.error(message, fix=fix)


def resolve(selection: Selection, labels: torch.Tensor, predicted: torch.Tensor,
            classes: tuple[str, ...], seed: int) -> torch.Tensor:
    """Indices (sorted, long) of the test examples the selection picks.

    `labels` and `predicted` are `(n,)` tensors over the test set.
    """
    import torch

    n = labels.shape[0]
    kind = selection.kind
    if kind == "all":
        return torch.arange(n)
    if kind == "misclassified":
        return torch.nonzero(predicted != labels).flatten()
    if kind == "correct":
        return torch.nonzero(predicted == labels).flatten()
    if kind in ("class", "predicted"):
        c = class_index(selection.value, classes, selection.where)
        return torch.nonzero((labels if kind == "class" else predicted) == c).flatten()
    if kind == "sample":
        generator = torch.Generator().manual_seed(seed)
        picked = torch.randperm(n, generator=generator)[: selection.value]
        return picked.sort().values
    indices = torch.tensor(selection.value, dtype=torch.long)
    if indices.numel() and int(indices.max()) >= n:
        bad = int(indices.max())
        raise selection.where.error(f"index {bad} is out of range for a test set of {n} examples",
                                    fix=f"use indices in 0..{n - 1}")
    return indices.unique()
