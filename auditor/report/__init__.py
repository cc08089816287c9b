"""Reports of audit outcomes: terminal tables and the machine-readable `results.json`."""

from auditor.report.results import results_document, write_results
from auditor.report.terminal import failure_table, summary_table

__all__ = ["failure_table", "results_document", "summary_table", "write_results"]
