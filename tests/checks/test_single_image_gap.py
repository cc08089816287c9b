"""`single_image_errors`' two statistics pinned directly: the lead (top-1 − top-2) / (1 − top-2)
and the robust z-score of the top-1 − top-2 gap, against hand computations; and the cut at
exactly `min_lead` (flagged: ≥) and exactly `min_z` (not flagged: the z must exceed it)."""

from __future__ import annotations

import pytest
import torch

from auditor.checks.robust import robust_z
from auditor.checks.single_image_errors import GAP_FLOOR, SingleImageErrors, driver_z, lead
from auditor.spec.checks import SingleImageParams
from conftest import FakeEngine


def test_lead_is_the_share_of_the_distance_to_a_perfect_match_the_driver_closes():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.3, 0.3, 0.2], [1.0, 0.0, 0.0]])
    assert torch.allclose(lead(scores), torch.tensor([0.4 / 0.5, 0.0, 1.0]))


def test_driver_z_is_the_robust_z_of_each_gap_against_all_gaps_with_a_floor():
    scores = torch.tensor([[0.9, 0.1], [0.5, 0.45], [0.4, 0.38], [0.3, 0.29], [0.2, 0.17]])
    gaps = torch.tensor([0.8, 0.05, 0.02, 0.01, 0.03])
    median = 0.03
    mad = float((gaps - median).abs().median())
    assert torch.allclose(driver_z(scores), robust_z(gaps, gaps, GAP_FLOOR), atol=1e-5)
    assert float(driver_z(scores)[0]) == pytest.approx((0.8 - median) / max(1.4826 * mad, GAP_FLOOR), rel=1e-4)


def test_a_lead_exactly_at_min_lead_is_flagged_and_a_z_exactly_at_min_z_is_not():
    engine = FakeEngine()
    indices = torch.arange(len(engine.scores))
    scores = engine.scores[indices]
    z, leads = driver_z(scores), lead(scores)
    top = int(torch.where(torch.isfinite(z), z, torch.tensor(-1.0)).argmax())
    at_lead = SingleImageErrors(SingleImageParams(min_z=0.0, min_lead=float(leads[top]), k=3)).run(engine, indices)
    assert top in [f.index for f in at_lead.failures]
    at_z = SingleImageErrors(SingleImageParams(min_z=float(z[top]), min_lead=0.0, k=3)).run(engine, indices)
    assert top not in [f.index for f in at_z.failures]


def test_worst_first_puts_unmeasured_findings_first_then_the_most_severe():
    from auditor.checks.base import Finding, worst_first

    found = [Finding(1, 0.2), Finding(2, float("nan")), Finding(3, 0.9), Finding(4, 0.2)]
    assert [f.index for f in worst_first(found)] == [2, 3, 1, 4]
    assert [f.index for f in worst_first(found, lowest=True)] == [2, 1, 4, 3]
