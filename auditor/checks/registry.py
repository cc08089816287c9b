"""String → check class registry, so YAML can name a check by its `check:` value."""

from __future__ import annotations

from auditor.checks.base import Check
from auditor.schema import Where, suggest

CHECKS: dict[str, type[Check]] = {}


def register(cls: type[Check]) -> type[Check]:
    """Class decorator: make `cls` available under `cls.name`."""
    if cls.name in CHECKS and CHECKS[cls.name] is not cls:
        raise ValueError(f"check name '{cls.name}' registered twice")
    CHECKS[cls.name] = cls
    return cls


def get_check(name: str, where: Where) -> type[Check]:
    """The check class called `name`; an unknown name is a SpecError with a suggestion."""
    try:
        return CHECKS[name]
    except KeyError:
        near = suggest(name, CHECKS)
        fix = f"did you mean '{near}'?" if near else f"available checks: {', '.join(sorted(CHECKS))}"
        raise where.error(f"unknown check '{name}'", fix=fix) from None
