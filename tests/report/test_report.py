"""Report directory: evidence PNGs, index.html (offline, escaped), results.json against its schema."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from auditor.cli import main
from auditor.report import SCHEMA
from conftest import needs_fashion


@needs_fashion
def test_failing_audit_writes_panels_index_and_valid_json(tmp_path, fashion_audit, monkeypatch, capsys):
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    path = fashion_audit("""
rules:
  - name: "accuracy <script>alert(1)</script>"
    check: accuracy
    on: all
    min_accuracy: 0.999
  - name: suspects
    check: harmful_training_images
    on: correct
    min_count: 3
""", test_limit=40)
    report = tmp_path / "report"
    assert main(["run", str(path), "--report", str(report), "--max-panels", "3"]) == 1
    assert f"report: {report / 'index.html'}" in capsys.readouterr().out

    document = json.loads((report / "results.json").read_text())
    jsonschema.validate(document, json.loads(SCHEMA.read_text()))
    html = (report / "index.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    panels = [f["panel"] for rule in document["rules"] for f in rule["failures"] if "panel" in f]
    kinds = {f["kind"] for rule in document["rules"] for f in rule["failures"] if "panel" in f}
    assert len(panels) == 6 and kinds == {"test", "train"}
    for panel in panels:
        assert (report / panel).is_file() and (report / panel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"href='{panel}'" in html
    # the JSON never truncates: every failing example is listed, panels or not
    accuracy = document["rules"][0]
    assert accuracy["n_failures"] == len(accuracy["failures"]) > 3
    assert "### audit `fashion-test`: ❌ failed" in summary.read_text()
    assert not list(report.rglob("*.tmp")), "no temporary files left behind"


def test_schema_rejects_a_document_missing_rules():
    schema = json.loads(SCHEMA.read_text())
    with pytest.raises(jsonschema.ValidationError, match="'rules' is a required property"):
        jsonschema.validate({"schema_version": 1, "audit": "a", "file": "f", "created": "t", "passed": True,
                             "seconds": 0.0}, schema)


def test_html_escapes_every_user_string(tmp_path):
    from auditor.report.html import render_index

    evil = "<img src=x onerror=alert(1)>"
    document = {"audit": evil, "file": evil, "created": "now", "passed": False, "rules": [{
        "name": evil, "check": "accuracy", "status": "failed", "selection": evil, "file": f"/a/{evil}.yaml",
        "line": 3, "message": evil, "value": 0.5, "threshold": 0.9, "comparison": ">=", "n_failures": 1,
        "failures": [{"kind": "class", "index": 0, "value": 0.1, "name": evil}]}]}
    html = render_index(document, {}, tmp_path)
    assert "<img src=x" not in html and len(re.findall("&lt;img src=x onerror=alert\\(1\\)&gt;", html)) >= 6


def test_failing_rules_come_first_then_warned_then_passed(tmp_path):
    from auditor.report.html import render_index

    def rule(name: str, status: str) -> dict:
        return {"name": name, "check": "accuracy", "status": status, "selection": "all", "file": "/a/x.yaml",
                "line": 3, "message": "m", "value": 0.5, "threshold": 0.9, "comparison": ">=", "n_failures": 0,
                "failures": []}

    statuses = [("p1", "passed"), ("w1", "warned"), ("f1", "failed"), ("p2", "passed"), ("f2", "failed")]
    html = render_index({"audit": "a", "file": "f", "created": "now", "passed": False,
                         "rules": [rule(n, s) for n, s in statuses]}, {}, tmp_path)
    sections = re.findall(r"<section id='([^']+)'", html)
    assert [s.split("-")[-1] if "-" in s else s for s in sections] == ["f1", "f2", "w1", "p1", "p2"], sections
    summary = re.findall(r"<tr><td><a href='#[^']+'>([^<]+)</a>", html)
    assert summary == ["f1", "f2", "w1", "p1", "p2"]
