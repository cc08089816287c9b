"""`influence_dominance`: "no misclassification may be driven by a single training image" —
the top-1 proponent's share of the summed positive Grad-Cos scores of the top-`k` proponents."""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, example_details, ranked, register, worst_first
from auditor.checks.base import related_train, worst_measured
from auditor.spec.checks import DominanceParams


def top1_shares(scores: torch.Tensor) -> torch.Tensor:
    """`(m, k)` proponent scores (best first) → top-1 share of the positive mass, NaN when none is positive."""
    positive = scores.clamp_min(0)
    total = positive.sum(1)
    return torch.where(total > 0, positive[:, 0] / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


@register
class InfluenceDominance(Check):
    Params = DominanceParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        train, scores = ranked(engine, indices, self.params.k)
        shares = top1_shares(scores)
        gaps = scores[:, 0] - scores[:, 1]
        failures = []
        for row, index in enumerate(indices.tolist()):
            share, gap = float(shares[row]), float(gaps[row])
            no_support = share != share
            too_dominant = not no_support and share > self.params.max_top1_share
            too_close = self.params.min_gap is not None and gap < self.params.min_gap
            if no_support or too_dominant or too_close:
                reason = "no positive proponent" if no_support else "dominant" if too_dominant else "small gap"
                failures.append(Finding(index, share, details={
                    **example_details(engine, index), "top1_train": int(train[row, 0]),
                    "top1_score": round(float(scores[row, 0]), 6), "gap": round(gap, 6), "reason": reason},
                    evidence=Evidence("influence", ("test", index), related=related_train(train[row], scores[row]))))
        failures = worst_first(failures)
        finite = shares[~shares.isnan()]
        return CheckResult("max top-1 proponent share", worst_measured(shares), self.params.max_top1_share, "<=",
                           len(indices), failures, extra={"median_top1_share": float(finite.median()) if len(finite) else None})
