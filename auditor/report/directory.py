"""Write a report directory: evidence PNGs, `results.json` and `index.html`. Each file is
written atomically, the index last, so a crashed run never leaves a half-written report
behind. The GitHub step summary is written whenever `$GITHUB_STEP_SUMMARY` is set, with or
without a report directory."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from auditor.report.html import markdown_summary, render_index
from auditor.report.panels import panel_name, write_panels
from auditor.report.results import results_document, write_report_file, write_results
from auditor.session import RuleOutcome


def write_report(folder: Path, session, outcomes: Iterable[RuleOutcome], max_panels: int = 8,
                 panels: dict[str, list[Path]] | None = None) -> Path:
    """Write the full report for `outcomes` of `session` under `folder`; return `index.html`.

    `panels` are PNGs already written per rule (the pytest plugin writes them per item).
    """
    folder = Path(folder)
    outcomes = list(outcomes)
    panels = dict(panels or {})
    for outcome in outcomes:
        if outcome.status != "passed" and outcome.failures and outcome.rule.name not in panels:
            panels[outcome.rule.name] = write_panels(session.engine, outcome, folder / "panels", max_panels)
    document = results_document(session.spec, outcomes)
    for rule in document["rules"]:
        files = {p.name: p for p in panels.get(rule["name"], [])}
        for failure in rule["failures"]:
            name = panel_name(rule["name"], failure["kind"], failure["index"])
            if name in files:
                failure["panel"] = f"panels/{name}"
    write_results(folder, document)
    index = folder / "index.html"
    write_report_file(index, render_index(document, panels, folder))
    return index


def write_step_summary(session, outcomes: Iterable[RuleOutcome], index: Path | None = None) -> Path | None:
    """Append the audit's table to `$GITHUB_STEP_SUMMARY` when it is set (CI); the file, or None."""
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary_file:
        return None
    with open(summary_file, "a", encoding="utf-8") as handle:
        handle.write(markdown_summary(results_document(session.spec, list(outcomes)), index))
    return Path(summary_file)
