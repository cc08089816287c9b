"""Baselines (`--audit-update-baseline`, `baseline:` policies): diff logic, files, CI, round trip."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from auditor.baseline import BaselineBook, BaselineEntry, BaselinePolicy, baseline_path, compare, load_baseline
from auditor.checks.base import CheckResult, Finding
from auditor.cli import main
from auditor.errors import AuditError, SpecError
from auditor.report import SCHEMA
from auditor.spec import load_spec
from conftest import needs_fashion, write


def result(value: float, failing: list[int], comparison: str = ">=") -> CheckResult:
    return CheckResult("accuracy", value, 0.5, comparison, 100, [Finding(i, 1.0) for i in failing])


def entry(value: float, failing: list[int], comparison: str = ">=") -> BaselineEntry:
    return BaselineEntry("accuracy", value, comparison, frozenset(("test", i) for i in failing))


def test_worsening_follows_the_comparison(tmp_path):
    policy = BaselinePolicy(max_increase=0.05)
    lower_is_worse = compare(policy, entry(0.90, []), result(0.80, []), tmp_path)
    assert lower_is_worse.worsening == pytest.approx(0.10) and lower_is_worse.regressed
    assert "moved 0.1 in its failing direction (from 0.9 to 0.8; max_increase 0.05)" in lower_is_worse.regressions[0]
    higher_is_worse = compare(policy, entry(0.10, [], "<="), result(0.13, [], "<="), tmp_path)
    assert higher_is_worse.worsening == pytest.approx(0.03) and not higher_is_worse.regressed
    improved = compare(policy, entry(0.10, [], "<="), result(0.02, [], "<="), tmp_path)
    assert improved.worsening == pytest.approx(-0.08) and not improved.regressed


def test_new_and_fixed_failures(tmp_path):
    diff = compare(BaselinePolicy(no_new_failures=True), entry(0.9, [1, 2, 3]), result(0.9, [2, 3, 7, 9]), tmp_path)
    assert diff.new_failures == (("test", 7), ("test", 9)) and diff.fixed_failures == (("test", 1),)
    assert diff.regressed and diff.regressions == ("2 new failures (no_new_failures)",)
    unjudged = compare(None, entry(0.9, [1]), result(0.1, [5]), tmp_path)
    assert not unjudged.regressed and unjudged.new_failures == (("test", 5),)


def test_changed_metric_is_a_regression(tmp_path):
    stored = BaselineEntry("worst class accuracy", 0.9, ">=", frozenset())
    diff = compare(BaselinePolicy(no_new_failures=True), stored, result(0.9, []), tmp_path)
    assert diff.regressed and "the metric changed from 'worst class accuracy' to 'accuracy'" in diff.regressions[0]


AUDIT = """
audit: x
model: {factory: a:b}
data: {train: {factory: a:b}, test: {factory: a:b}}
rules:
  - name: r1
    check: accuracy
    min_accuracy: 0.5
    baseline: %s
"""


def test_policy_is_parsed_and_validated(tmp_path):
    spec = load_spec(write(tmp_path / "audit_a.yaml", AUDIT % "{max_increase: 0.02, no_new_failures: true}"))
    assert spec.rules[0].baseline == BaselinePolicy(max_increase=0.02, no_new_failures=True)
    with pytest.raises(SpecError, match=r"audit_b.yaml:8: rules\[0\].baseline: a baseline policy needs "
                                        r"`max_increase` or `no_new_failures: true`"):
        load_spec(write(tmp_path / "audit_b.yaml", AUDIT % "{}"))
    with pytest.raises(SpecError, match=r"unknown key 'no_new_failure'\n  fix: did you mean 'no_new_failures'\?"):
        load_spec(write(tmp_path / "audit_c.yaml", AUDIT % "{no_new_failure: true}"))
    with pytest.raises(SpecError, match=r"baseline.max_increase: -1.0 is out of range \[0.0, inf\]"):
        load_spec(write(tmp_path / "audit_d.yaml", AUDIT % "{max_increase: -1}"))


def test_corrupt_or_foreign_baseline_file_names_the_fix(tmp_path):
    path = tmp_path / "audit_x.baseline.json"
    path.write_text("{not json")
    with pytest.raises(AuditError, match=r"audit_x.baseline.json: cannot read the baseline file.*\n  fix: delete "
                                         r"audit_x.baseline.json and run `auditor run AUDIT.yaml --update-baseline`"):
        load_baseline(path)
    path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(AuditError, match="not an auditor baseline"):
        load_baseline(path)


def test_missing_baseline_is_an_error_in_ci_and_created_locally(tmp_path, monkeypatch):
    spec = load_spec(write(tmp_path / "audit_a.yaml", AUDIT % "{no_new_failures: true}"))
    rule = spec.rules[0]
    monkeypatch.setenv("CI", "true")
    with pytest.raises(AuditError, match=r"rule 'r1' has a `baseline:` policy but the baseline file does not exist "
                                         r"\(CI=true.*\n  fix: .*locally and commit audit_a.baseline.json"):
        BaselineBook(spec.path, spec.name).check(rule, result(0.9, [1]))
    monkeypatch.delenv("CI")
    book = BaselineBook(spec.path, spec.name)
    diff = book.check(rule, result(0.9, [1]))
    assert not diff.regressed and "first entry" in diff.note
    assert book.save() == baseline_path(spec.path) == tmp_path / "audit_a.baseline.json"
    assert load_baseline(tmp_path / "audit_a.baseline.json")["r1"] == entry(0.9, [1])


def test_partial_update_keeps_other_rules(tmp_path):
    path = tmp_path / "audit_a.yaml"
    spec = load_spec(write(path, AUDIT % "{no_new_failures: true}"))
    book = BaselineBook(path, "x", update=True)
    book.pending = {"other": entry(0.5, [3])}
    book.save()
    book.check(spec.rules[0], result(0.9, [1]))
    book.save()
    stored = load_baseline(baseline_path(path))
    assert set(stored) == {"other", "r1"} and stored["other"] == entry(0.5, [3])


RULES = """
rules:
  - name: accurate
    check: accuracy
    min_accuracy: 0.0
    baseline: {max_increase: 0.02, no_new_failures: true}
  - name: informative
    check: accuracy
    on: {class: Trouser}
    min_accuracy: 0.0
"""


@needs_fashion
def test_round_trip_update_unchanged_degraded(fashion_audit, trained_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    path = fashion_audit(RULES, test_limit=300)
    assert main(["run", str(path), "--update-baseline"]) == 0
    stored = load_baseline(baseline_path(path))
    assert set(stored) == {"accurate", "informative"} and stored["accurate"].failures
    capsys.readouterr()

    assert main(["run", str(path), "--report", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "results.json").read_text())
    jsonschema.validate(same, json.loads(SCHEMA.read_text()))
    assert same["rules"][0]["baseline"]["new_failures"] == [] and same["rules"][0]["baseline"]["regressed"] is False

    weights = torch.load(trained_checkpoint, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    degraded = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                for k, v in weights.items()}
    torch.save(degraded, tmp_path / "degraded.pt")
    path.write_text(path.read_text().replace(str(trained_checkpoint), str(tmp_path / "degraded.pt")))
    capsys.readouterr()
    assert main(["run", str(path), "--report", str(tmp_path / "worse")]) == 1
    out = capsys.readouterr().out
    assert "FAILED  accurate" in out and "REGRESSION" in out and "new failures since the baseline (" in out
    worse = json.loads((tmp_path / "worse" / "results.json").read_text())
    jsonschema.validate(worse, json.loads(SCHEMA.read_text()))
    diff = worse["rules"][0]["baseline"]
    failing_now = {f["index"] for f in worse["rules"][0]["failures"]}
    new = {f["index"] for f in diff["new_failures"]}
    assert new and new <= failing_now and not new & {i for _, i in stored["accurate"].failures}
    assert diff["regressed"] and any("new failures" in r for r in diff["regressions"])
    assert "new failures (" in (tmp_path / "worse" / "index.html").read_text()
    assert worse["rules"][1]["status"] == "passed"  # no policy: its diff is shown, never judged


@needs_fashion
def test_plugin_update_with_k_keeps_rules_it_did_not_run(fashion_audit, pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    path = fashion_audit(RULES, test_limit=200)
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", "--audit-update-baseline")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["audit baseline written: *audit_fashion.baseline.json"])
    file = baseline_path(path)
    document = json.loads(file.read_text())
    document["rules"]["informative"]["value"] = 0.123
    file.write_text(json.dumps(document))
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", "--audit-update-baseline", "-k", "accurate")
    result.assert_outcomes(passed=1, deselected=1)
    assert load_baseline(file)["informative"].value == 0.123

    monkeypatch.setenv("CI", "true")
    file.unlink()
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", "-k", "accurate")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*rule 'accurate' has a `baseline:` policy but the baseline file does not exist*"])
    assert not file.exists()
