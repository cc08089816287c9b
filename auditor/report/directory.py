"""Write a report directory: evidence PNGs, `results.json` and `index.html`. Each file is
written atomically, the index last, so a crashed run never leaves a half-written report
behind. The GitHub step summary is written whenever `$GITHUB_STEP_SUMMARY` is set, with or
without a report directory."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from auditor.report.html import markdown_summary, render_index
from auditor.report.panels import panel_name, write_panels
from auditor.report.results import results_document, write_report_file, write_results
from auditor.session import RuleOutcome


def write_report(folder: Path, session, outcomes: Iterable[RuleOutcome], max_panels: int = 8,
                 panels: dict[str, list[Path]] | None = None) -> Path:
    """Write the full report for `outcomes` of `session` under `folder`; return `index.html`.

    `panels` are PNGs already written per rule; the missing ones are drawn here.
    """
    folder = Path(folder)
    outcomes = list(outcomes)
    panels = dict(panels or {})
    for outcome in outcomes:
        if outcome.status != "passed" and outcome.failures and outcome.rule.name not in panels:
            panels[outcome.rule.name] = write_panels(session.engine, outcome, folder / "panels", max_panels)
    return render_report(folder, results_document(session.spec, outcomes, session.warnings), panels)


def render_report(folder: Path, document: dict[str, Any], panels: dict[str, list[Path]]) -> Path:
    """`results.json` and `index.html` under `folder` for a document whose panels are written
    (the pytest plugin gathers both from its items, across pytest-xdist workers too)."""
    folder = Path(folder)
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


def write_step_summary(document: dict[str, Any], index: Path | None = None) -> Path | None:
    """Append the audit's summary to `$GITHUB_STEP_SUMMARY` when it is set (CI); the file, or None."""
    summary_file = os.environ.get("GITHUB_STEP_SUMMARY")
    if not summary_file:
        return None
    with open(summary_file, "a", encoding="utf-8") as handle:
        handle.write(markdown_summary(document, index))
    return Path(summary_file)
