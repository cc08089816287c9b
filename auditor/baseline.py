"""Baselines: each rule's metric and failing set from an accepted run, kept next to the audit YAML.

`AUDIT.yaml` has its baseline in `AUDIT.baseline.json`. `--audit-update-baseline` (or
`auditor run --update-baseline`) merges the rules that ran into it, so a partial run never
deletes the others. A rule with `baseline: {max_increase: x, no_new_failures: true}` is then
judged against its entry as well as its threshold: the metric may not move by more than `x`
in its failing direction (up for `<=` thresholds, down for `>=`), and no item may fail that
did not fail in the baseline.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from auditor.errors import AuditError
from auditor.files import atomic_write
from auditor.spec import BaselinePolicy

BASELINE_VERSION = 1
UPDATE_HINT = "run `auditor run AUDIT.yaml --update-baseline` (or pytest --audit-update-baseline)"


@dataclass(frozen=True)
class BaselineEntry:
    """What a rule measured when its baseline was taken."""

    metric: str
    value: float | None
    comparison: str
    failures: frozenset[tuple[str, int]]

    def to_json(self) -> dict[str, Any]:
        """Failures grouped by kind, indices sorted: one index per line keeps git diffs readable."""
        grouped: dict[str, list[int]] = {}
        for kind, index in sorted(self.failures):
            grouped.setdefault(kind, []).append(index)
        return {"metric": self.metric, "value": self.value, "comparison": self.comparison, "failures": grouped}


@dataclass(frozen=True)
class BaselineDiff:
    """A rule's run against its baseline entry: the metric's change and the new/fixed failures."""

    file: Path
    baseline_value: float | None
    value: float | None
    worsening: float | None
    new_failures: tuple[tuple[str, int], ...]
    fixed_failures: tuple[tuple[str, int], ...]
    regressions: tuple[str, ...] = ()
    judged: bool = True
    note: str = ""

    @property
    def regressed(self) -> bool:
        return self.judged and bool(self.regressions)

    def summary(self) -> str:
        """`baseline: +0.013 worse, 3 new failures, 1 fixed` (and why it regressed, if it did)."""
        parts = [self.note] if self.note else []
        if self.worsening is not None:
            parts.append(f"{self.worsening:+.4g} {'worse' if self.worsening > 0 else 'change'}")
        parts.append(f"{len(self.new_failures)} new failures, {len(self.fixed_failures)} fixed")
        text = "baseline: " + ", ".join(parts)
        if self.regressed:
            text += " — REGRESSION: " + "; ".join(self.regressions)
        return text

    def to_json(self) -> dict[str, Any]:
        return {"file": str(self.file), "baseline_value": self.baseline_value, "value": self.value,
                "worsening": self.worsening, "regressed": self.regressed, "judged": self.judged,
                "regressions": list(self.regressions), "note": self.note,
                "new_failures": [{"kind": k, "index": i} for k, i in self.new_failures],
                "fixed_failures": [{"kind": k, "index": i} for k, i in self.fixed_failures]}


def baseline_path(audit_path: Path) -> Path:
    """`audit_x.yaml` → `audit_x.baseline.json`, beside it."""
    return Path(audit_path).with_suffix(".baseline.json")


def in_ci() -> bool:
    """True under a CI service (`CI=true`, as GitHub Actions, GitLab and most others set)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def entry_of(result: Any) -> BaselineEntry:
    """The baseline entry recording a `CheckResult`."""
    return BaselineEntry(result.metric, _number(result.value), result.comparison,
                         frozenset((f.kind, int(f.index)) for f in result.failures))


def load_baseline(path: Path) -> dict[str, BaselineEntry] | None:
    """The entries stored at `path` by rule name, or None when there is no file yet."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = f"delete {path.name} and {UPDATE_HINT}"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditError(f"cannot read the baseline file: {exc}", path=path, fix=fix) from None
    if not isinstance(document, dict) or document.get("baseline_version") != BASELINE_VERSION:
        raise AuditError(f"not an auditor baseline (expected baseline_version {BASELINE_VERSION})",
                         path=path, fix=fix)
    entries = {}
    for name, raw in (document.get("rules") or {}).items():
        try:
            entries[name] = BaselineEntry(str(raw["metric"]), _number(raw["value"]), str(raw["comparison"]),
                                          frozenset((str(kind), int(i)) for kind, indices in raw["failures"].items()
                                                    for i in indices))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise AuditError(f"baseline entry for rule '{name}' is malformed", path=path,
                             field=f"rules.{name}", fix=fix) from None
    return entries


def save_baseline(path: Path, audit: str, entries: dict[str, BaselineEntry]) -> Path:
    """Merge `entries` into the baseline at `path` (other rules' entries are kept)."""
    merged = load_baseline(path) or {}
    merged.update(entries)
    document = {"baseline_version": BASELINE_VERSION, "audit": audit,
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rules": {name: merged[name].to_json() for name in sorted(merged)}}
    try:
        return atomic_write(Path(path), json.dumps(document, indent=2, allow_nan=False) + "\n")
    except OSError as exc:
        raise AuditError(f"cannot write the baseline file: {exc.strerror or exc}", path=path,
                         fix="make the audit's folder writable, or run without --update-baseline") from None


def compare(policy: BaselinePolicy | None, entry: BaselineEntry, result: Any, file: Path) -> BaselineDiff:
    """Diff `result` against `entry`; a regression is judged only when the rule has a `policy`."""
    current = entry_of(result)
    worsening = None
    if current.value is not None and entry.value is not None:
        sign = 1.0 if current.comparison == "<=" else -1.0
        worsening = sign * (current.value - entry.value)
    regressions = []
    new = tuple(sorted(current.failures - entry.failures))
    fixed = tuple(sorted(entry.failures - current.failures))
    if policy is not None and entry.metric != current.metric:
        regressions.append(f"the metric changed from '{entry.metric}' to '{current.metric}'; {UPDATE_HINT}")
    elif policy is not None:
        if policy.max_increase is not None and worsening is not None and worsening > policy.max_increase + 1e-12:
            regressions.append(f"{current.metric} moved {worsening:.4g} in its failing direction "
                               f"(from {entry.value:.4g} to {current.value:.4g}; max_increase {policy.max_increase:g})")
        if policy.max_increase is not None and current.value is None and entry.value is not None:
            regressions.append(f"{current.metric} is not a number any more (was {entry.value:.4g})")
        if policy.no_new_failures and new:
            regressions.append(f"{len(new)} new failures (no_new_failures)")
    return BaselineDiff(file, entry.value, current.value, worsening, new, fixed, tuple(regressions),
                        judged=policy is not None)


def refuse_missing_in_ci(rule_name: str, file: Path) -> None:
    """A rule with a baseline policy but no entry is an error in CI: nothing to judge it against."""
    reason = "does not exist" if not file.is_file() else f"has no entry for rule '{rule_name}'"
    raise AuditError(f"rule '{rule_name}' has a `baseline:` policy but the baseline file {reason} "
                     "(CI=true, so it is not created here)", path=file, field=f"rules[{rule_name}].baseline",
                     fix=f"{UPDATE_HINT} locally and commit {file.name}")


@dataclass
class BaselineBook:
    """The baseline of one audit during a run: loaded once, updated at the end of the run."""

    audit_path: Path
    audit: str
    update: bool = False
    ci: bool = field(default_factory=in_ci)
    _entries: dict[str, BaselineEntry] | None = None  # None until read
    pending: dict[str, BaselineEntry] = field(default_factory=dict)

    @property
    def file(self) -> Path:
        return baseline_path(self.audit_path)

    def entries(self) -> dict[str, BaselineEntry]:
        if self._entries is None:
            self._entries = load_baseline(self.file) or {}
        return self._entries

    def check(self, rule: Any, result: Any) -> BaselineDiff | None:
        """Compare one rule's result with its entry, and remember what to write back.

        Without an entry, a rule with a `baseline:` policy is recorded by this run (locally) or
        is an error (CI). With `update`, every rule that ran is recorded and none is judged.
        """
        entry = self.entries().get(rule.name)
        if entry is None and rule.baseline is not None and not self.update and self.ci:
            refuse_missing_in_ci(rule.name, self.file)
        if self.update or (entry is None and rule.baseline is not None):
            self.pending[rule.name] = entry_of(result)
        if entry is None:
            if rule.name not in self.pending:
                return None
            return BaselineDiff(self.file, None, _number(result.value), None, (), (), judged=False,
                                note=f"first entry, recorded in {self.file.name}")
        diff = compare(rule.baseline, entry, result, self.file)
        return replace(diff, judged=False, note=f"updated {self.file.name}") if self.update else diff

    def save(self) -> Path | None:
        """Write what this run recorded (merging with the stored rules); None when nothing changed."""
        if not self.pending:
            return None
        path = save_baseline(self.file, self.audit, self.pending)
        self.pending = {}
        self._entries = None
        return path


def _number(value: Any) -> float | None:
    """A finite float, or None (NaN and infinities are not comparable)."""
    return float(value) if value is not None and math.isfinite(value) else None
