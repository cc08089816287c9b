"""Plain-text tables for the terminal and for pytest failure messages (tabulate)."""

from __future__ import annotations

from collections.abc import Iterable

from tabulate import tabulate

from auditor.report.results import rule_entry
from auditor.session import RuleOutcome


def failure_table(outcome: RuleOutcome, max_rows: int = 10) -> str:
    """The first `max_rows` failing items of a rule, and how many more there are."""
    failures = outcome.failures
    if not failures:
        return ""
    rows = [{key: cell(value) for key, value in f.row().items()} for f in failures[:max_rows]]
    text = tabulate(rows, headers="keys", tablefmt="simple", floatfmt=".4g")
    if len(failures) > max_rows:
        text += f"\n... and {len(failures) - max_rows} more (the full list is in results.json)"
    return text


def cell(value: object) -> object:
    """A table cell: a list of related items as their first three indices (`9578 Bag, 100 Bag, …`)."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        shown = [" ".join(str(v) for k, v in item.items() if k != "similarity") for item in value[:3]]
        return ", ".join(shown) + (", …" if len(value) > 3 else "")
    return value


def failure_text(outcome: RuleOutcome, max_examples: int = 10, advice: str | None = None) -> str:
    """A failed rule as pytest shows it: where, what, the failing examples, the baseline diff.
    `advice` is the rule's what-to-fix sentence when the caller has its entry already."""
    rule = outcome.rule
    lines = [f"rule '{rule.name}' {outcome.status} ({rule.where.label()})",
             f"  check: {rule.check}, on: {rule.selection.describe()}",
             f"  {outcome.message}"]
    what_to_do = rule_entry(outcome)["advice"] if advice is None else advice
    if what_to_do:
        lines.append(f"  {what_to_do}")
    table = failure_table(outcome, max_examples)
    if table:
        lines += ["", "failing examples:", table]
    diff = baseline_lines(outcome, max_examples)
    if diff:
        lines += ["", *diff]
    return "\n".join(lines)


def baseline_lines(outcome: RuleOutcome, max_items: int = 10) -> list[str]:
    """The rule's diff against its baseline: new and fixed failures (first `max_items` of each)."""
    diff = outcome.baseline
    if diff is None or not (diff.new_failures or diff.fixed_failures):
        return []
    lines = []
    for label, items in (("new failures since the baseline", diff.new_failures),
                         ("fixed since the baseline", diff.fixed_failures)):
        if items:
            shown = ", ".join(f"{kind} {index}" for kind, index in items[:max_items])
            more = f" ... and {len(items) - max_items} more" if len(items) > max_items else ""
            lines.append(f"{label} ({len(items)}): {shown}{more}")
    return lines


def summary_table(rules: Iterable[dict]) -> str:
    """One row per rule (`results.json` entries): status, check, selection, value and threshold."""
    rows = []
    for r in rules:
        measured = r["metric"] is not None
        rows.append({
            "rule": r["name"],
            "status": r["status"].upper(),
            "check": r["check"],
            "on": r["selection"],
            "value": f"{r['value']:.4g}" if measured and r["value"] is not None else "",
            "threshold": f"{r['comparison']} {r['threshold']:g}" if measured and r["threshold"] is not None else "",
            "failing": _failing(r) if measured else "",
            "seconds": f"{r['seconds']:.1f}",
        })
    return tabulate(rows, headers="keys", tablefmt="simple")


KIND_NAMES = {"class": "class", "train": "training image"}


def _failing(rule: dict) -> str:
    """`3/500` for examples; `2 classes` (or other kinds) when the failures are not examples."""
    kinds = {f["kind"] for f in rule["failures"]}
    if kinds and kinds != {"test"}:
        kind = KIND_NAMES.get(kinds.pop(), "item") if len(kinds) == 1 else "item"
        return f"{rule['n_failures']} {kind}{'es' if kind.endswith('s') else 's'}"
    return f"{rule['n_failures']}/{rule['n_selected']}"
