"""`results.json`: every rule, its metric, threshold and the FULL failing list; written atomically."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from auditor.report.advice import advice
from auditor.files import atomic_write, unwritable_report
from auditor.session import RuleOutcome
from auditor.spec import AuditSpec

SCHEMA_VERSION = 1
SCHEMA = Path(__file__).with_name("results.schema.json")


def results_document(spec: AuditSpec, outcomes: Iterable[RuleOutcome], warnings: Sequence[str] = ()) -> dict[str, Any]:
    """A JSON-ready description of the audit's outcomes (no truncation) and its data warnings."""
    return audit_document(spec.name, spec.path, [rule_entry(o) for o in outcomes], warnings)


def audit_document(name: str, file: str | Path, rules: list[dict[str, Any]], warnings: Sequence[str] = ()
                   ) -> dict[str, Any]:
    """The document of an audit from its rules' entries (a pytest run gathers them from the
    items, also across pytest-xdist workers) and what the sanity checks warned about the data."""
    return {
        "schema_version": SCHEMA_VERSION,
        "audit": name,
        "file": str(file),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": all(rule["status"] != "failed" for rule in rules),
        "seconds": round(sum(rule["seconds"] for rule in rules), 2),
        "warnings": list(warnings),
        "rules": rules,
    }


def rule_entry(o: RuleOutcome) -> dict[str, Any]:
    """One rule's part of `results.json`: plain JSON values only (it crosses processes)."""
    r = o.result
    entry = {
        "name": o.rule.name,
        "check": o.rule.check,
        "status": o.status,
        "severity": o.rule.severity,
        "selection": o.rule.selection.describe(),
        "file": str(o.rule.where.path),
        "line": o.rule.where.line,
        "tags": list(o.rule.tags),
        "message": o.message,
        "seconds": round(o.seconds, 2),
        "metric": r.metric if r else None,
        "value": r.value if r else None,
        "threshold": r.threshold if r else None,
        "comparison": r.comparison if r else None,
        "n_selected": r.n_selected if r else 0,
        "n_failures": len(r.failures) if r else 0,
        "failures": [{"kind": f.kind, "index": f.index, "value": f.value, **f.details,
                      **({"path": f.path} if f.path else {}),
                      **({"evidence": f.evidence.to_json()} if f.evidence is not None else {})}
                     for f in (r.failures if r else [])],
        "extra": r.extra if r else {},
        **({"baseline": o.baseline.to_json()} if o.baseline is not None else {}),
    }
    entry["advice"] = advice(entry)
    return json.loads(json.dumps(_finite(entry), default=_jsonable, allow_nan=False))


def write_results(directory: Path, document: dict[str, Any], name: str = "results.json") -> Path:
    """Write `document` as JSON under `directory` via a temp file and rename."""
    path = Path(directory) / name
    text = json.dumps(_finite(document), indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    return write_report_file(path, text + "\n")


def write_report_file(path: Path, data: str | bytes) -> Path:
    """One report file, written atomically; an unwritable folder is the user's to fix."""
    try:
        return atomic_write(path, data)
    except OSError as exc:
        raise unwritable_report(path.parent, exc, "--report / --audit-report") from None


def _finite(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
