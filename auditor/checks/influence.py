"""Checks on Grad-Cos proponents of test predictions (DESIGN.md §1.1).

- `influence_dominance`: "no misclassification may be driven by a single training image" —
  the top-1 proponent's share of the summed positive scores of the top-`k` proponents.
- `proponent_label_agreement`: share of the top-`k` proponents whose label equals the
  predicted label; low agreement flags predictions supported by off-label training images.
- `harmful_training_images`: training images among the top-`k` opponents of at least
  `min_count` correct predictions (`mode: opponents`, the default: a mislabelled image pulls
  against the examples that look like it) or among the top-`k` proponents of at least
  `min_count` errors (`mode: proponents`): suspected mislabelled or shortcut-carrying images.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import torch

from auditor.checks.base import Check, CheckResult, Finding, require_top_k
from auditor.checks.registry import register
from auditor.schema import bounded


def top1_shares(scores: torch.Tensor) -> torch.Tensor:
    """`(m, k)` proponent scores (best first) → top-1 share of the positive mass, NaN when none is positive."""
    positive = scores.clamp_min(0)
    total = positive.sum(1)
    return torch.where(total > 0, positive[:, 0] / total.clamp_min(1e-30), torch.full_like(total, float("nan")))


def label_agreement(proponent_labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """`(m, k)` labels of proponents and `(m,)` predictions → share agreeing per example."""
    return (proponent_labels == predicted[:, None]).float().mean(1)


def _ranked(engine, indices: torch.Tensor, k: int, side: str = "proponents"):
    """Top-`k` proponents (or opponents) of the test examples: `(m, k)` train indices and scores."""
    require_top_k(engine, k)
    ranked = getattr(engine.influence(indices), side)
    return ranked.indices[:, :k], ranked.scores[:, :k]


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
        train, scores = _ranked(engine, indices, self.params.k)
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
        train, scores = _ranked(engine, indices, self.params.k)
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


@dataclass(frozen=True)
class HarmfulParams:
    mode: Literal["opponents", "proponents"] = "opponents"
    k: int = bounded(1, 1000, default=5)
    min_count: int = bounded(1, None, default=100, help="test examples an image must oppose (opponents) or "
                                                          "support in error (proponents) to be flagged")
    max_count: int = bounded(0, None, default=0, help="flagged training images the rule tolerates")


@register
class HarmfulTrainingImages(Check):
    """Flags training images that are among the top-`k` opponents of at least `min_count`
    correct predictions (default; suspected mislabels) or among the top-`k` proponents of at
    least `min_count` errors. The failing list is of training images, with their counts."""

    name = "harmful_training_images"
    Params = HarmfulParams
    per_example = False
    description = "training images that oppose correct predictions or drive errors"

    def run(self, engine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        correct = engine.predictions.correct[indices]
        chosen = indices[~correct] if p.mode == "proponents" else indices[correct]
        if len(chosen) == 0:
            return CheckResult("flagged training images", 0.0, p.max_count, "<=", 0, [],
                               extra={"note": f"no {'misclassified' if p.mode == 'proponents' else 'correct'} "
                                              "example in the selection"})
        counts, tests = harm_counts(engine, chosen, p.mode, p.k)
        flagged = (counts >= p.min_count).nonzero().flatten().tolist()
        predicted = engine.predictions.predicted
        failures = [Finding(j, float(counts[j]), kind="train", details={
            "label": engine.classes[int(engine.train_labels[j])],
            "examples": tests[j][:20],
            "predicted": sorted({engine.classes[int(predicted[t])] for t in tests[j]})}) for j in flagged]
        failures.sort(key=lambda f: (-f.value, f.index))
        return CheckResult("flagged training images", float(len(failures)), p.max_count, "<=", len(chosen),
                           failures, passed=len(failures) <= p.max_count,
                           extra={"mode": p.mode, "max_count_observed": float(counts.max()) if len(counts) else 0.0})


def harm_counts(engine, tests: torch.Tensor, mode: str, k: int) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Per training image: how many of `tests` have it among their top-`k` opponents
    (`mode="opponents"`) or proponents, and which tests those are."""
    train, _ = _ranked(engine, tests, k, mode)
    counts = torch.bincount(train.flatten(), minlength=len(engine.train_labels))
    which: dict[int, list[int]] = defaultdict(list)
    for row, test in enumerate(tests.tolist()):
        for j in train[row].tolist():
            which[j].append(test)
    return counts, which
