"""Attribution errors raised without a YAML position get the audit file and the line of the
setting that controls them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from auditor.errors import AuditError
from auditor.spec import AuditSpec


@contextmanager
def located(spec: AuditSpec, field: str, section: str = "settings.attribution") -> Iterator[None]:
    """Re-raise a position-less `AuditError` at `section.field` of `spec` (the model's line for `model…`)."""
    try:
        yield
    except AuditError as exc:
        if exc.path is not None:
            raise
        field = exc.field or f"{section}.{field}"
        where = spec.model.where if field.startswith("model") and spec.model else spec.settings.where
        raise type(exc)(exc.message, path=spec.path, line=where.line if where else None,
                        field=field, fix=exc.fix) from None
