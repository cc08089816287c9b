"""influence_dominance and proponent_label_agreement on constructed and real inputs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from auditor.attribution.influence import Influence, TopK
from auditor.checks.influence_dominance import InfluenceDominance, top1_shares
from auditor.checks.proponent_label_agreement import ProponentLabelAgreement
from auditor.spec.checks import AgreementParams, DominanceParams
from auditor.engine import Predictions
from auditor.spec import AttributionSettings
from conftest import needs_fashion


def fake_engine(scores: list[list[float]], train: list[list[int]], train_labels: list[int], predicted: list[int]):
    """An engine stand-in whose influence() returns the given proponents."""
    m = len(scores)
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float()
    return SimpleNamespace(
        attribution=AttributionSettings(top_k=5),
        classes=("a", "b", "c"),
        predictions=Predictions(logits, torch.zeros(m, dtype=torch.long)),
        train_labels=torch.tensor(train_labels),
        influence=lambda idx: Influence(idx, TopK(torch.tensor(train)[idx], torch.tensor(scores)[idx]),
                                        TopK(torch.tensor(train)[idx], -torch.tensor(scores)[idx])),
    )


def test_top1_share_closed_form():
    shares = top1_shares(torch.tensor([[0.6, 0.2, 0.2], [0.5, -0.1, -0.3], [-0.1, -0.2, -0.3]]))
    assert torch.allclose(shares[:2], torch.tensor([0.6, 1.0])) and shares[2].isnan()


def test_one_dominant_proponent_fails_and_balanced_passes():
    engine = fake_engine([[0.9, 0.05, 0.05], [0.3, 0.3, 0.3], [-0.1, -0.2, -0.3]],
                         [[4, 5, 6], [1, 2, 3], [7, 8, 9]], list(range(10)), [0, 1, 2])
    result = InfluenceDominance(DominanceParams(max_top1_share=0.5, k=3)).run(engine, torch.arange(3))
    # examples with no positive proponent come first: nothing in training supports them
    assert [(f.index, f.details["reason"]) for f in result.failures] == [(2, "no positive proponent"), (0, "dominant")]
    assert result.failures[1].details["top1_train"] == 4 and result.value == pytest.approx(0.9)
    gap = InfluenceDominance(DominanceParams(max_top1_share=1.0, k=3, min_gap=0.1)).run(engine, torch.tensor([1]))
    assert [f.details["reason"] for f in gap.failures] == ["small gap"]


def test_planted_off_label_proponents_fail_agreement():
    labels = [0, 0, 0, 1, 1, 2, 2, 2]
    engine = fake_engine([[0.5, 0.4, 0.3], [0.5, 0.4, 0.3]], [[0, 1, 2], [5, 3, 4]], labels, [0, 2])
    result = ProponentLabelAgreement(AgreementParams(min_agreement=0.5, k=3)).run(engine, torch.arange(2))
    assert [f.index for f in result.failures] == [1]
    assert result.failures[0].value == pytest.approx(1 / 3)
    assert result.failures[0].details["proponent_labels"] == "c,b,b"


@needs_fashion
def test_influence_rules_on_a_real_model(pytester, fashion_audit, tmp_path):
    path = fashion_audit("""
rules:
  - name: no-single-image-errors
    check: influence_dominance
    on: misclassified
    max_top1_share: 0.205
  - name: proponents-share-label
    check: proponent_label_agreement
    on: {sample: 40}
    min_agreement: 0.6
""", test_limit=200)
    result = pytester.runpytest(str(path), "-p", "no:cacheprovider", f"--audit-report={tmp_path / 'r'}")
    result.assert_outcomes(passed=1, failed=1)
    assert "rule 'no-single-image-errors' failed" in result.stdout.str() and "top1_train" in result.stdout.str()
    rules = {r["name"]: r for r in json.loads((tmp_path / "r" / "results.json").read_text())["rules"]}
    dominance, agreement = rules["no-single-image-errors"], rules["proponents-share-label"]
    # five proponents share the mass: a top-1 share is at least 1/5 (all positive), most stay near it
    assert dominance["status"] == "failed" and 0.2 <= dominance["extra"]["median_top1_share"] < 0.25
    assert 0 < dominance["n_failures"] < dominance["n_selected"]
    assert {f["reason"] for f in dominance["failures"]} <= {"dominant", "no positive proponent"}
    assert agreement["status"] == "passed" and agreement["n_selected"] == 40 and agreement["extra"]["mean_agreement"] > 0.9
