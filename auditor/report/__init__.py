"""Reports of audit outcomes: terminal tables, `results.json`, PNG panels and `index.html`."""

from auditor.report.directory import render_report, write_report, write_step_summary
from auditor.report.results import SCHEMA, audit_document, results_document, rule_entry, write_results
from auditor.report.terminal import baseline_lines, failure_table, failure_text, summary_table

__all__ = ["SCHEMA", "audit_document", "render_report", "rule_entry", "baseline_lines", "failure_table", "failure_text",
           "results_document", "summary_table", "write_report", "write_results", "write_step_summary"]
