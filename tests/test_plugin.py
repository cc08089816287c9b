"""The pytest plugin, driven through pytester on real Fashion-MNIST and a trained model."""

from __future__ import annotations

import json
from pathlib import Path
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


@pytest.mark.parametrize("encoding", ["bom", "crlf", "latin1"])
def test_an_audit_saved_by_a_windows_editor_is_collected_like_any_other(pytester, fashion_audit, encoding):
    path = fashion_audit(RULES)
    text = path.read_text(encoding="utf-8")
    data = {"bom": b"\xef\xbb\xbf" + text.encode(), "crlf": text.replace("\n", "\r\n").encode(),
            "latin1": ("# r\u00e9sum\u00e9 des r\u00e8gles\n" + text).encode("latin-1")}[encoding]
    path.write_bytes(data)
    items, _ = pytester.inline_genitems(str(path))
    assert [item.name for item in items] == ["good-enough", "impossible", "soft"]
    from auditor.cli import main

    assert main(["validate", str(path)]) == 0


XDIST_RULES = """
rules:
  - {name: accurate-enough, check: accuracy, min_accuracy: 0.3}
  - {name: no-border, check: region_mass, region: border, max_mass: 0.05, source: saliency, mostly: 0.99}
  - {name: agreement, check: proponent_label_agreement, min_agreement: 0.0, k: 3}
  - {name: no-dominance, check: influence_dominance, max_top1_share: 0.2, k: 3, mostly: 0.99}
"""


def test_xdist_workers_share_the_cache_and_write_one_complete_report(pytester, fashion_audit, tmp_path):
    pytest.importorskip("xdist")
    path = fashion_audit(XDIST_RULES, test_limit=100)
    report = tmp_path / "report"
    result = pytester.runpytest_subprocess(str(path), "-n", "2", "-p", "no:cacheprovider", f"--audit-report={report}")
    result.assert_outcomes(passed=2, failed=2)
    document = json.loads((report / "results.json").read_text())
    assert [r["name"] for r in document["rules"]] == ["accurate-enough", "no-border", "agreement", "no-dominance"]
    assert [r["status"] for r in document["rules"]] == ["passed", "failed", "passed", "failed"]
    html = (report / "index.html").read_text()
    assert html.index("no-border") < html.index("accurate-enough")           # failed rules first
    for rule in ("no-border", "no-dominance"):                                 # each worker's panels are linked
        panels = [f["panel"] for f in document["rules"][[r["name"] for r in document["rules"]].index(rule)]["failures"]
                  if "panel" in f]
        assert panels and all((report / p).is_file() for p in panels)
    features = list((tmp_path / "cache").rglob("*.pt")) + list((tmp_path / "cache").rglob("*.npy"))
    assert features                                       # one shared cache folder, written by the workers
    assert "audit fashion-test (audit_fashion.yaml)" in result.stdout.str() and "no-dominance" in result.stdout.str()


def test_pytest_html_shows_the_failing_rules_panels(pytester, fashion_audit, tmp_path):
    pytest.importorskip("pytest_html")
    path = fashion_audit(XDIST_RULES, test_limit=100)
    html = tmp_path / "pytest.html"
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", f"--html={html}", "--self-contained-html",
                                "-k", "no-border or accurate")
    result.assert_outcomes(passed=1, failed=1)
    text = html.read_text()
    assert text.count("data:image/png;base64,") >= 1 and "no-border-test-" in text


def test_panels_written_only_for_pytest_html_are_removed_once_inlined(pytester, fashion_audit, tmp_path, monkeypatch):
    """Without --audit-report the panels go to a scratch folder; the report holds them inlined."""
    pytest.importorskip("pytest_html")
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = pytester.runpytest(str(fashion_audit(XDIST_RULES, test_limit=100)), "-p", "no:cacheprovider",
                                f"--html={tmp_path / 'pytest.html'}", "--self-contained-html", "-k", "no-border")
    result.assert_outcomes(failed=1)
    assert "data:image/png;base64," in (tmp_path / "pytest.html").read_text()
    assert not list(scratch.glob("audit-panels-*"))


def test_update_baseline_refuses_xdist(pytester, fashion_audit):
    pytest.importorskip("xdist")
    result = pytester.runpytest_subprocess(str(fashion_audit(XDIST_RULES)), "-n", "2", "--audit-update-baseline")
    assert result.ret == pytest.ExitCode.USAGE_ERROR and "without -n" in result.stderr.str()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_an_inconclusive_rule_is_skipped_with_its_reason_and_fails_under_audit_strict(pytester):
    import fakes
    from test_cli import TFA_ON_FUSED_ATTENTION

    path = pytester.path / "audit_fused.yaml"
    path.write_text(TFA_ON_FUSED_ATTENTION)
    (pytester.path / "fakes.py").write_text(Path(fakes.__file__).read_text())
    result = pytester.runpytest_subprocess(str(path), "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    assert "inconclusive (rule 'tfa-border'" in result.stdout.str()
    assert "TFA needs second derivatives" in result.stdout.str()
    strict = pytester.runpytest_subprocess(str(path), "-p", "no:cacheprovider", "--audit-strict")
    strict.assert_outcomes(passed=1, failed=1)
    assert "rule 'tfa-border' inconclusive" in strict.stdout.str()
