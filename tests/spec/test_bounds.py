"""Every bounded field of every check kind accepts a value exactly at its bound and rejects one just
beyond it, naming the field and the range: the bounds are pinned here, not by tests aimed elsewhere."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from auditor.errors import SpecError
from auditor.spec.binding import Where, build
from auditor.spec.checks import CHECK_KINDS

def required(cls: type) -> dict:
    """A valid value for each field without a default (its lower bound, else 0.5)."""
    return {f.name: f.metadata.get("lo") if f.metadata.get("lo") is not None else 0.5
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def bounded_fields() -> list[tuple[str, str, float | None, float | None, bool]]:
    """(kind, field, lo, hi, is_int) for every field declared with `bounded`."""
    found = []
    for kind in CHECK_KINDS.names:
        cls = CHECK_KINDS.get(kind)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "lo" in f.metadata:
                found.append((kind, f.name, f.metadata["lo"], f.metadata["hi"], int in typing.get_args(hints[f.name])
                              or hints[f.name] is int))
    return found


def beyond(bound: float, is_int: bool, direction: int) -> float:
    return bound + direction if is_int else bound + direction * max(1e-9, abs(bound) * 1e-9)


@pytest.mark.parametrize("kind,name,lo,hi,is_int", bounded_fields(), ids=lambda v: str(v))
def test_a_value_at_a_bound_passes_and_one_beyond_is_rejected_with_the_range(kind, name, lo, hi, is_int):
    cls, where = CHECK_KINDS.get(kind), Where(Path("audit.yaml"), 7, "rules[0]")
    base = {key: value for key, value in required(cls).items() if key != name}
    for bound, direction in ((lo, -1), (hi, 1)):
        if bound is None:
            continue
        value = int(bound) if is_int else float(bound)
        assert getattr(build(cls, {**base, name: value}, where), name) == value
        with pytest.raises(SpecError) as info:
            build(cls, {**base, name: beyond(value, is_int, direction)}, where)
        message = str(info.value)
        assert message.startswith("audit.yaml:7") and name in message
        assert f"{lo if lo is not None else '-inf'}" in message and f"{hi if hi is not None else 'inf'}" in message


def test_every_check_kind_has_its_bounds_pinned():
    assert {kind for kind, *_ in bounded_fields()} == set(CHECK_KINDS.names)


def test_one_way_to_locate_an_error_from_a_position_or_none():
    from auditor.errors import TargetError, error_at

    where = Where(Path("audit.yaml"), 4, "data.train")
    error = error_at(TargetError, where, "cannot read", "fix it")
    assert isinstance(error, TargetError) and str(error) == "audit.yaml:4: data.train: cannot read\n  fix: fix it"
    assert str(error_at(TargetError, where, "bad", field="model")).startswith("audit.yaml:4: model: bad")
    assert str(error_at(TargetError, None, "bad", "fix")) == "bad\n  fix: fix"                 # values given in Python
    assert isinstance(where.error("x"), SpecError) and isinstance(where.error("x", kind=TargetError), TargetError)
