"""`harmful_training_images`: training images among the top-`k` opponents of at least
`min_count` correct predictions (`mode: opponents`, the default: a mislabelled image pulls
against the examples that look like it) or among the top-`k` proponents of at least
`min_count` errors (`mode: proponents`): suspected mislabelled or shortcut-carrying images.
The failing list is of training images, with their counts."""

from __future__ import annotations

from collections import defaultdict

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, ranked, register, worst_first
from auditor.spec.checks import HarmfulParams


def harm_counts(engine: AuditEngine, tests: torch.Tensor, mode: str, k: int
                ) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """Per training image: how many of `tests` have it among their top-`k` opponents
    (`mode="opponents"`) or proponents, and which tests those are."""
    train, _ = ranked(engine, tests, k, mode)
    counts = torch.bincount(train.flatten(), minlength=len(engine.train_labels))
    which: dict[int, list[int]] = defaultdict(list)
    for row, test in enumerate(tests.tolist()):
        for j in train[row].tolist():
            which[j].append(test)
    return counts, which


@register
class HarmfulTrainingImages(Check):
    Params = HarmfulParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
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
            "predicted": sorted({engine.classes[int(predicted[t])] for t in tests[j]})},
            evidence=Evidence(f"influence {p.mode}", ("train", j),
                              related=tuple(("test", t, 1.0) for t in tests[j][:20]))) for j in flagged]
        failures = worst_first(sorted(failures, key=lambda f: f.index))
        return CheckResult("flagged training images", float(len(failures)), p.max_count, "<=", len(chosen),
                           failures, passed=len(failures) <= p.max_count,
                           extra={"mode": p.mode, "max_count_observed": float(counts.max()) if len(counts) else 0.0})
