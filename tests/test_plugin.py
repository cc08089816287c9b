"""The pytest plugin, driven through pytester on real Fashion-MNIST and a trained model."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from conftest import needs_fashion

pytestmark = needs_fashion

RULES = """
rules:
  - name: good-enough
    check: accuracy
    min_accuracy: 0.3
    tags: [quality]
  - name: impossible
    check: accuracy
    on: misclassified
    min_accuracy: 0.5
  - name: soft
    check: accuracy
    min_accuracy: 0.99
    severity: warn
"""


def test_one_item_per_rule_pass_fail_and_warn(pytester, fashion_audit, tmp_path):
    path = fashion_audit(RULES)
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", f"--junitxml={tmp_path / 'j.xml'}",
                                f"--audit-report={tmp_path / 'report'}")
    result.assert_outcomes(passed=2, failed=1, warnings=1)
    out = result.stdout.str()
    assert "rule 'impossible' failed (audit_fashion.yaml:15)" in out
    assert "accuracy = 0 (required >= 0.5)" in out
    assert "failing examples:" in out and "predicted" in out
    assert "did not hold (severity: warn)" in out
    xml = ET.parse(tmp_path / "j.xml")
    names = {p.get("name") for p in xml.iter("property")}
    assert {"audit_metric", "audit_value", "audit_threshold"} <= names
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    failed = [r for r in results["rules"] if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["impossible"] and failed[0]["n_failures"] == failed[0]["n_selected"]


def test_tags_become_markers_and_k_selects(pytester, fashion_audit):
    path = fashion_audit(RULES)
    pytester.runpytest(str(path), "-m", "quality", "-p", "no:cacheprovider").assert_outcomes(passed=1)
    pytester.runpytest(str(path), "-k", "impossible", "-p", "no:cacheprovider").assert_outcomes(failed=1)


def test_reportinfo_points_at_rule_line(pytester, fashion_audit):
    path = fashion_audit(RULES)
    result = pytester.runpytest(str(path), "--collect-only", "-q", "-p", "no:cacheprovider")
    assert "audit_fashion.yaml::good-enough" in result.stdout.str()
    items, _ = pytester.inline_genitems(str(path))
    assert [item.reportinfo()[1] + 1 for item in items] == [11, 15, 19]


def test_invalid_spec_is_a_collection_error_with_location(pytester, fashion_audit):
    path = fashion_audit("rules:\n  - {name: x, check: acuracy}\n")
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "audit_fashion.yaml:10: rules[0].check: unknown check 'acuracy'" in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_a_model_or_data_error_is_one_error_for_the_audit_without_traceback(pytester, fashion_audit, tmp_path):
    path = fashion_audit(RULES.replace("good-enough", "g"))
    text = path.read_text().replace("device: cpu", "device: cuda:7")
    path.write_text(text)
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", "-rN")   # -rN: no summary lines, whose
    out = result.stdout.str()                                                 # cut depends on terminal width
    result.assert_outcomes(errors=1, skipped=2)    # one ERROR for the audit, the other rules skipped
    assert "audit error:" in out and "settings.device" in out and out.count("settings.device") == 1
    assert "Traceback" not in out and "site-packages/torch" not in out
    assert "failed to load (error at rule 'g')" in pytester.runpytest(str(path), "-p", "no:cacheprovider",
                                                                       "-rs").stdout.str()


def test_non_audit_yaml_is_ignored(pytester):
    pytester.makefile(".yaml", config="a: 1")
    pytester.makefile(".yaml", audit_config="a: 1")
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, result.stdout.str()
    assert "error" not in result.stdout.str().lower()


@pytest.mark.parametrize("name", ["audit_x.yaml", "x.audit.yaml"])
def test_both_file_patterns_are_collected(pytester, fashion_audit, name):
    path = fashion_audit(RULES, name=name)
    items, _ = pytester.inline_genitems(str(path))
    assert len(items) == 3
