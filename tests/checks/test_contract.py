"""The contract every registered check keeps: an empty selection measures nothing, NaN maps
and scores are findings (never a silent pass), and a normal case returns a well-formed result
whose findings carry their evidence. Also: every declared name of every registry has an
implementation."""

from __future__ import annotations

import math

import pytest
import torch

from auditor.checks import CHECKS, CheckResult
from auditor.registry import GRADIENT_COMPUTERS, PROJECTIONS, SALIENCY_METHODS
from auditor.spec.checks import CHECK_KINDS
from conftest import N_TEST, FakeEngine

# Parameters that make each check fail on the normal case below, and the keys it needs.
PARAMS = {"accuracy": {"min_accuracy": 0.99}, "influence_dominance": {"max_top1_share": 0.3},
          "proponent_label_agreement": {"min_agreement": 0.9}, "region_mass": {"max_mass": 0.05},
          "saliency_concentration": {"max_mass": 0.1}, "harmful_training_images": {"min_count": 1, "k": 2},
          "shortcut_carriers": {"min_group": 1, "max_recurrence": 0.1, "carrier_reference": 10, "min_z": 3.0},
          "single_image_errors": {"min_z": 3.0}, "mislabel_suspects": {"max_own_share": 0.1}}
MAP_CHECKS = ("region_mass", "saliency_concentration")
def make(name: str):
    params = CHECK_KINDS.get(name)(**PARAMS[name])
    return CHECKS.get(name)(params)


def test_every_declared_name_has_an_implementation():
    assert set(PARAMS) == set(CHECK_KINDS.names) == set(CHECKS.names)
    for registry in (CHECKS, SALIENCY_METHODS, PROJECTIONS, GRADIENT_COMPUTERS):
        assert registry.names and not registry.missing(), (registry.kind, registry.missing())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_empty_selection_measures_nothing(name):
    result = make(name).evaluate(FakeEngine(), torch.zeros(0, dtype=torch.long))
    assert isinstance(result, CheckResult) and result.n_selected == 0 and result.failures == []


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_nan_maps_and_scores_never_pass_silently(name):
    engine = FakeEngine(nan=True)
    result = make(name).evaluate(engine, torch.arange(N_TEST))
    if name in MAP_CHECKS + ("influence_dominance", "single_image_errors"):      # one NaN policy: nothing
        assert math.isnan(result.value)                                            # measured reads NaN, not 0
    if name in MAP_CHECKS:
        assert len(result.failures) == N_TEST
        assert {f.details["reason"] for f in result.failures} == {"attribution is NaN or Inf"}
    elif name == "influence_dominance":
        assert {f.details["reason"] for f in result.failures} == {"no positive proponent"}
    elif name == "single_image_errors":
        assert len(result.failures) == N_TEST
        assert {f.details["reason"] for f in result.failures} == {"proponent scores are NaN"}
    elif name == "shortcut_carriers":                # NaN maps flag no hotspot: nothing is followed
        assert result.failures == [] and result.extra["note"] == "no shortcut hotspot flagged on the test side"
    else:                                   # label- and count-based checks do not read scores or maps
        assert result.n_selected > 0 and result.failures


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_normal_case_is_well_formed_and_findings_carry_evidence(name):
    check = make(name)
    result = check.evaluate(FakeEngine(), torch.arange(N_TEST))
    assert result.comparison in ("<=", ">=") and math.isfinite(result.value) and result.n_selected > 0
    assert result.failures, "the parameters above make every check fail here"
    for finding in result.failures:
        if finding.kind == "class":
            continue
        ev = finding.evidence
        assert ev is not None and ev.image[0] in ("test", "train")
        if name == "shortcut_carriers":
            assert ev.image[0] == "train" and ev.window is not None and ev.magnitude.shape == (16, 16)
        if name in MAP_CHECKS:
            assert ev.magnitude is not None and ev.magnitude.shape == (16, 16) and ev.source == check.params.source
            assert (ev.window is not None) == (name == "saliency_concentration")
            assert (ev.region is not None) == (name == "region_mass")
        assert ev.to_json()["image"]["kind"] == ev.image[0]


def test_a_metric_is_the_worst_finite_value_and_nan_only_when_nothing_was_measured():
    from auditor.checks.base import worst_measured

    values = torch.tensor([0.2, float("nan"), 0.7, float("inf"), 0.1])
    assert worst_measured(values) == pytest.approx(0.7) and worst_measured(values, lowest=True) == pytest.approx(0.1)
    assert math.isnan(worst_measured(torch.tensor([float("nan"), float("nan")])))
    assert math.isnan(worst_measured(torch.zeros(0)))
