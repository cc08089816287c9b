"""Checks on Grad-Cos proponents of test predictions (DESIGN.md §1.1).

- `influence_dominance`: "no misclassification may be driven by a single training image" —
  the top-1 proponent's share of the summed positive scores of the top-`k` proponents.
- `proponent_label_agreement`: share of the top-`k` proponents whose label equals the
  predicted label; low agreement flags predictions supported by off-label training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from auditor.checks.base import Check, CheckResult, Finding
from auditor.checks.registry import register
from auditor.errors import AuditError
from auditor.schema import bounded


def top1_shares(scores: torch.Tensor) -> torch.Tensor:
    """`(m, k)` proponent scores (best first) → top-1 share of the positive mass, NaN when none is positive."""
    positive = scores.clamp_min(0)
    total = positive.sum(1)
    return torch.where(total > 0, positive[:, 0] / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def label_agreement(proponent_labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """`(m, k)` labels of proponents and `(m,)` predictions → share agreeing per example."""
    return (proponent_labels == predicted[:, None]).float().mean(1)


def _proponents(engine, indices: torch.Tensor, k: int):
    top_k = engine.attribution.top_k
    if k > top_k:
        raise AuditError(f"k={k} exceeds settings.attribution.top_k={top_k}", field="k",
                         fix=f"lower k or raise settings.attribution.top_k to {k}")
    influence = engine.influence(indices)
    return influence.proponents.indices[:, :k], influence.proponents.scores[:, :k]


def _describe(engine, index: int) -> dict:
    p = engine.predictions
    return {"label": engine.classes[int(p.labels[index])], "predicted": engine.classes[int(p.predicted[index])]}


@dataclass(frozen=True)
class DominanceParams:
    max_top1_share: float = bounded(0.0, 1.0, help="largest share one training image may carry")
    k: int = bounded(2, 1000, default=5)
    min_gap: float | None = bounded(0.0, 1.0, default=None, help="required score gap top-1 − top-2")


@register
class InfluenceDominance(Check):
    name = "influence_dominance"
    Params = DominanceParams
    description = "share of the top-1 proponent among the top-k"

    def run(self, engine, indices: torch.Tensor) -> CheckResult:
        train, scores = _proponents(engine, indices, self.params.k)
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
                    **_describe(engine, index), "top1_train": int(train[row, 0]),
                    "top1_score": round(float(scores[row, 0]), 6), "gap": round(gap, 6), "reason": reason}))
        failures.sort(key=lambda f: -f.value if f.value == f.value else float("-inf"))
        finite = shares[~shares.isnan()]
        value = float(finite.max()) if len(finite) else float("nan")
        return CheckResult("max top-1 proponent share", value, self.params.max_top1_share, "<=",
                           len(indices), failures, extra={"median_top1_share": float(finite.median()) if len(finite) else None})


@dataclass(frozen=True)
class AgreementParams:
    min_agreement: float = bounded(0.0, 1.0, help="share of proponents that must carry the predicted label")
    k: int = bounded(1, 1000, default=5)


@register
class ProponentLabelAgreement(Check):
    name = "proponent_label_agreement"
    Params = AgreementParams
    description = "share of top-k proponents labelled as the prediction"

    def run(self, engine, indices: torch.Tensor) -> CheckResult:
        train, scores = _proponents(engine, indices, self.params.k)
        predicted = engine.predictions.predicted[indices]
        agreement = label_agreement(engine.train_labels[train], predicted)
        failures = [
            Finding(index, float(agreement[row]), details={
                **_describe(engine, index),
                "proponent_labels": ",".join(engine.classes[int(c)] for c in engine.train_labels[train[row]]),
                "proponents": ",".join(map(str, train[row].tolist()))})
            for row, index in enumerate(indices.tolist()) if agreement[row] < self.params.min_agreement]
        failures.sort(key=lambda f: f.value)
        return CheckResult("min proponent label agreement", float(agreement.min()), self.params.min_agreement, ">=",
                           len(indices), failures, extra={"mean_agreement": float(agreement.mean())})
