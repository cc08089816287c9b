"""The auditor's own exception types: each names where the problem is and how to fix it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar


class AuditError(ValueError):
    """Base for every error caused by the user's input (spec, model, data, environment).

    The CLI maps these to exit code 2 and the pytest plugin prints them without a traceback;
    anything else is a bug in the auditor and keeps its traceback.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None,
                 field: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def location(self) -> str:
        """`file:line: field` prefix, with whatever parts are known."""
        where = self.path or ""
        if self.path and self.line is not None:
            where += f":{self.line}"
        if self.field:
            where = f"{where}: {self.field}" if where else self.field
        return where

    def render(self) -> str:
        where = self.location()
        text = f"{where}: {self.message}" if where else self.message
        if self.fix:
            text += f"\n  fix: {self.fix}"
        return text


class SpecError(AuditError):
    """The audit YAML is malformed or names something that does not exist."""


class TargetError(AuditError):
    """The model, checkpoint, dataset or device described by the spec cannot be used."""


class AttributionError(AuditError):
    """An attribution could not be computed from the given model and settings."""


class CannotJudge(AuditError):
    """One rule cannot run on this model or data (e.g. an op without second derivatives): the
    rule is reported `inconclusive` with this message and the other rules still run."""


class CacheError(AuditError):
    """The feature cache directory is unusable (not ours, corrupt beyond rebuilding)."""


class MemoryWarning(UserWarning):
    """The auditor ran out of memory and carried on with a smaller chunk."""


Kind = TypeVar("Kind", bound=AuditError)


def error_at(kind: type[Kind], where: Any, message: str, fix: str | None = None, field: str | None = None) -> Kind:
    """A `kind` error located at `where` (a spec `Where`: file, line, field; or None for values
    given in Python), `field` overriding its field: the one way every layer makes a located error."""
    return kind(message, path=getattr(where, "path", None), line=getattr(where, "line", None),
                field=field or getattr(where, "field", None) or None, fix=fix)
