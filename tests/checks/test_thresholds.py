"""Every threshold at its boundary, as documented: a value equal to a `max_*` or `min_*`
threshold passes (`<=` / `>=`), a value one float beyond it fails; `min_count` and `min_z`
are as written (`count >= min_count` flags, `z > min_z` makes a carrier). And the rule
tolerances `mostly` and `max_failures`, on constructed failure counts."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch
from conftest import N_TEST, FakeEngine

from auditor.checks import CHECKS
from auditor.session import judge
from auditor.spec import load_spec
from auditor.spec.checks import CHECK_KINDS

ALL = torch.arange(N_TEST)


def evaluate(name: str, **params):
    check = CHECKS.get(name)(CHECK_KINDS.get(name)(**params))
    return check.evaluate(FakeEngine(), ALL)


def below(x: float) -> float:
    """The next float32 below `x` (maps and scores are float32; a float64 step would round back)."""
    return float(torch.nextafter(torch.tensor(x, dtype=torch.float32), torch.tensor(-math.inf)))


def above(x: float) -> float:
    return float(torch.nextafter(torch.tensor(x, dtype=torch.float32), torch.tensor(math.inf)))


def test_influence_dominance_share_equal_to_the_threshold_passes():
    worst = evaluate("influence_dominance", max_top1_share=1.0).value
    assert 0 < worst < 1
    assert evaluate("influence_dominance", max_top1_share=worst).failures == []
    at_edge = evaluate("influence_dominance", max_top1_share=below(worst)).failures
    assert [f.details["reason"] for f in at_edge] == ["dominant"] and at_edge[0].value == worst


def test_influence_dominance_gap_equal_to_min_gap_passes():
    engine = FakeEngine()
    gaps = engine.scores[:, 0] - engine.scores[:, 1]
    smallest = float(gaps.min())
    assert evaluate("influence_dominance", max_top1_share=1.0, min_gap=smallest).failures == []
    failures = evaluate("influence_dominance", max_top1_share=1.0, min_gap=above(smallest)).failures
    assert [f.details["reason"] for f in failures] == ["small gap"]


def test_proponent_agreement_equal_to_the_threshold_passes():
    worst = evaluate("proponent_label_agreement", min_agreement=0.0).value
    assert worst < 1
    assert evaluate("proponent_label_agreement", min_agreement=worst).failures == []
    assert evaluate("proponent_label_agreement", min_agreement=above(worst)).failures


@pytest.mark.parametrize("per_class", [False, True])
def test_accuracy_equal_to_the_threshold_passes(per_class):
    value = evaluate("accuracy", min_accuracy=0.0, per_class=per_class).value
    assert 0 < value < 1
    assert evaluate("accuracy", min_accuracy=value, per_class=per_class).passed is True
    assert evaluate("accuracy", min_accuracy=above(value), per_class=per_class).passed is False


def test_region_mass_equal_to_the_threshold_passes():
    worst = evaluate("region_mass", max_mass=1.0, box=(0.0, 0.0, 0.5, 0.5)).value
    assert 0 < worst < 1
    assert evaluate("region_mass", max_mass=worst, box=(0.0, 0.0, 0.5, 0.5)).failures == []
    assert len(evaluate("region_mass", max_mass=below(worst), box=(0.0, 0.0, 0.5, 0.5)).failures) == 1


def test_densest_window_share_equal_to_the_threshold_passes():
    worst = evaluate("saliency_concentration", max_mass=1.0).value
    assert 0 < worst < 1
    assert evaluate("saliency_concentration", max_mass=worst).failures == []
    assert len(evaluate("saliency_concentration", max_mass=below(worst)).failures) == 1


def test_hotspot_excess_equal_to_max_recurrence_is_not_flagged():
    worst = evaluate("saliency_concentration", max_recurrence=1.0, min_group=1).value
    assert 0 < worst <= 1
    at = evaluate("saliency_concentration", max_recurrence=worst, min_group=1)
    assert at.passed is True and at.failures == []
    beyond = evaluate("saliency_concentration", max_recurrence=below(worst), min_group=1)
    assert beyond.passed is False and beyond.failures


def test_harmful_count_equal_to_min_count_is_flagged_and_max_count_is_tolerated():
    most = int(evaluate("harmful_training_images", min_count=1, k=2).extra["max_count_observed"])
    assert most >= 2
    flagged = evaluate("harmful_training_images", min_count=most, k=2)
    assert flagged.failures and {f.value for f in flagged.failures} == {float(most)}
    assert evaluate("harmful_training_images", min_count=most + 1, k=2).failures == []
    n = len(flagged.failures)
    assert evaluate("harmful_training_images", min_count=most, k=2, max_count=n).passed is True
    assert evaluate("harmful_training_images", min_count=most, k=2, max_count=n - 1).passed is False


def test_carrier_z_equal_to_min_z_is_not_a_carrier_and_the_share_at_its_threshold_passes():
    params = {"min_group": 1, "max_recurrence": 0.1, "carrier_reference": 10}
    found = evaluate("shortcut_carriers", min_z=0.0, **params)
    weakest = min(f.value for f in found.failures)
    assert weakest > 0 and len(found.failures) >= 2
    fewer = evaluate("shortcut_carriers", min_z=weakest, **params)
    assert len(fewer.failures) == len(found.failures) - 1
    share = found.value
    assert evaluate("shortcut_carriers", min_z=0.0, max_carrier_share=share, **params).passed is True
    assert evaluate("shortcut_carriers", min_z=0.0, max_carrier_share=below(share), **params).passed is False


@pytest.fixture
def rule(tmp_path):
    path = tmp_path / "audit_t.yaml"
    path.write_text("audit: t\nmodel: {factory: fakes:linear}\n"
                    "data: {train: {factory: fakes:images}, test: {factory: fakes:images}}\n"
                    "rules:\n  - {name: r, check: influence_dominance, max_top1_share: 0.5}\n")
    return load_spec(path).rules[0]


@pytest.mark.parametrize(("mostly", "failures", "selected", "holds"), [
    (0.9, 1, 10, True),          # 9/10 = 0.9 >= 0.9: exactly at the tolerance
    (0.9, 2, 10, False),
    (0.99, 0, 10, True),
    (0.99, 1, 200, True),        # 0.995
    (0.99, 3, 200, False),       # 0.985
    (1.0, 1, 1000, False),
    (0.0, 10, 10, True),
])
def test_mostly_is_the_share_of_examples_that_must_hold(rule, mostly, failures, selected, holds):
    assert judge(replace(rule, mostly=mostly), failures, selected) is holds


@pytest.mark.parametrize(("max_failures", "failures", "holds"), [
    (None, 0, True), (None, 1, False), (0, 0, True), (0, 1, False), (3, 3, True), (3, 4, False)])
def test_max_failures_is_the_number_of_failing_examples_tolerated(rule, max_failures, failures, holds):
    assert judge(replace(rule, max_failures=max_failures), failures, 100) is holds


def test_rule_tolerance_decides_the_session_verdict(tmp_path):
    """End to end through the session: the same failing examples pass or fail by tolerance alone."""
    from auditor.session import AuditSession

    path = tmp_path / "audit_t.yaml"
    body = ("audit: t\nmodel: {factory: fakes:linear}\n"
            "data: {train: {factory: fakes:images}, test: {factory: fakes:images}}\n"
            "settings: {device: cpu, cache_dir: " + str(tmp_path / "cache") + "}\nrules:\n")
    rules = ["  - {name: strict, check: influence_dominance, max_top1_share: 0.0}",
             "  - {name: mostly-none, check: influence_dominance, max_top1_share: 0.0, mostly: 0.0}",
             "  - {name: tolerated, check: influence_dominance, max_top1_share: 0.0, max_failures: 100000}"]
    path.write_text(body + "\n".join(rules) + "\n")
    outcomes = {o.rule.name: o for o in AuditSession(load_spec(path)).run_all()}
    failing = len(outcomes["strict"].result.failures)
    assert failing > 0 and outcomes["strict"].status == "failed"
    assert outcomes["mostly-none"].status == "passed" and outcomes["tolerated"].status == "passed"
    assert len(outcomes["mostly-none"].result.failures) == failing


@pytest.mark.parametrize("name", ["saliency_concentration", "shortcut_carriers"])
def test_recurrence_with_no_class_large_enough_is_inconclusive_not_passed(name):
    extra = {"carrier_reference": 10} if name == "shortcut_carriers" else {}
    small = evaluate(name, max_recurrence=0.1, min_group=30, **extra)     # 12 maps in all: no class has 30
    assert re.match(r"no predicted class has the 30 maps recurrence needs \(most: \d+ predicted a\)", small.inconclusive)
    assert "audit a larger test set" in small.inconclusive
    judged = evaluate(name, max_recurrence=0.1, min_group=1, **extra)
    assert judged.inconclusive is None


def test_an_inconclusive_result_is_reported_inconclusive_by_the_session(tmp_path):
    from auditor.cli import main
    from conftest import audit

    path = audit(tmp_path, """
settings: {device: cpu}
rules:
  - {name: spots, check: saliency_concentration, max_recurrence: 0.1, min_group: 30}
  - {name: fine, check: accuracy, min_accuracy: 0.0}
""")
    assert main(["run", str(path), "--quiet"]) == 0
    assert main(["run", str(path), "--quiet", "--strict"]) == 1
