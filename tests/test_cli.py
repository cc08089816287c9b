"""`auditor run` / `auditor validate`: exit codes and agreement with the pytest plugin."""

from __future__ import annotations

import json

from auditor.cli import main
from conftest import needs_fashion, write

RULES = """
rules:
  - {name: fine, check: accuracy, min_accuracy: 0.3}
  - {name: strict, check: accuracy, on: misclassified, min_accuracy: 0.5}
"""


@needs_fashion
def test_run_exit_codes_and_report(fashion_audit, tmp_path, capsys):
    passing = fashion_audit("rules:\n  - {name: fine, check: accuracy, min_accuracy: 0.3}\n", name="audit_ok.yaml")
    assert main(["run", str(passing)]) == 0
    failing = fashion_audit(RULES)
    assert main(["run", str(failing), "--report", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert "FAILED  strict" in out and "results:" in out
    assert json.loads((tmp_path / "r" / "results.json").read_text())["passed"] is False


def test_bad_input_exits_2_with_location(tmp_path, capsys):
    path = write(tmp_path / "audit_bad.yaml", "audit: x\nmodel: {factory: a.b}\ndata: {train: {factory: a:b}, test: {factory: a:b}}\n")
    assert main(["run", str(path)]) == 2
    assert f"{path}:2: model.factory" in capsys.readouterr().err
    assert main(["validate", str(path)]) == 2


def test_validate_lists_rules(tmp_path, capsys):
    path = write(tmp_path / "audit_ok.yaml", """
audit: x
model: {factory: a:b}
data: {train: {factory: a:b}, test: {factory: a:b}}
rules:
  - {name: r1, check: accuracy, min_accuracy: 0.5}
""")
    assert main(["validate", str(path)]) == 0
    assert "line 5: r1 (accuracy, on all)" in capsys.readouterr().out


@needs_fashion
def test_cli_and_plugin_agree(fashion_audit, tmp_path, pytester):
    path = fashion_audit(RULES)
    main(["run", str(path), "--report", str(tmp_path / "cli")])
    pytester.runpytest(str(path), "-p", "no:cacheprovider", f"--audit-report={tmp_path / 'plugin'}")
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    plugin = json.loads((tmp_path / "plugin" / "results.json").read_text())
    assert cli.pop("created") and plugin.pop("created")     # only the time of writing may differ
    assert cli == plugin and len(cli["rules"]) == 2 and any(r["failures"] for r in cli["rules"])
