"""Which test examples a rule looks at: the `on:` field.

Forms: `all`, `misclassified`, `correct`, `{class: NAME}`, `{predicted: NAME}`,
`{sample: N}` (seeded random subset), `{indices: [i, ...]}`. Parsed here (torch-free);
resolved against the model's predictions by `auditor.engine.predictions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from auditor.spec.binding import Where, describe, expect_mapping
from auditor.suggest import did_you_mean

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
        raise where.error(f"unknown selection '{raw}'", fix=did_you_mean(raw, SIMPLE + KEYED))
    mapping = expect_mapping(raw, where)
    if len(mapping) != 1:
        raise where.error(f"a selection mapping has exactly one key, got {sorted(mapping) or 'none'}",
                          fix=f"use one of: {', '.join(KEYED)}")
    (kind, value), = mapping.items()
    here = where.child(kind, mapping.line_of(kind))
    if kind not in KEYED:
        raise here.error(f"unknown selection key '{kind}'", fix=did_you_mean(kind, KEYED))
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
