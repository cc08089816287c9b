"""Outputs never collide and CI always gets its summary: one report folder per audit file (two
audits with the same `audit:` name included), and the GitHub step summary whenever
`$GITHUB_STEP_SUMMARY` is set, with or without a report folder."""

from __future__ import annotations

import json

from auditor.cli import main
from conftest import HEAD, write

RULES = "settings: {device: cpu, cache_dir: cache}\nrules:\n  - {name: acc, check: accuracy, min_accuracy: 0.0}\n"


def test_step_summary_is_written_without_a_report_folder(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    path = write(tmp_path / "audit_a.yaml", HEAD + RULES)
    assert main(["run", str(path)]) == 0
    text = summary.read_text()
    assert "### audit `t`: ✅ passed" in text and "| acc | passed | accuracy |" in text and "Report:" not in text


def test_two_audits_with_one_name_get_two_report_folders(tmp_path, pytester, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    for stem in ("audit_first", "audit_second"):
        write(pytester.path / f"{stem}.yaml", HEAD + RULES)       # both say `audit: t`
    result = pytester.runpytest("-p", "no:cacheprovider", f"--audit-report={tmp_path / 'out'}")
    result.assert_outcomes(passed=2)
    for stem in ("audit_first", "audit_second"):
        document = json.loads((tmp_path / "out" / stem / "results.json").read_text())
        assert document["file"].endswith(f"{stem}.yaml") and document["audit"] == "t"
