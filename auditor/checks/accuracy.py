"""`accuracy`: the selection's accuracy (or its worst class's) must reach `min_accuracy`."""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, register, worst_first
from auditor.spec.checks import AccuracyParams


@register
class AccuracyCheck(Check):
    """Aggregate check. With `per_class`, the metric is the lowest per-class accuracy."""

    Params = AccuracyParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = engine.predictions
        labels, predicted = p.labels[indices], p.predicted[indices]
        correct = predicted == labels
        threshold = self.params.min_accuracy
        if self.params.per_class:
            return self._per_class(engine.classes, labels, correct, threshold)
        accuracy = correct.float().mean().item()
        confidence = p.probs[indices].max(dim=1).values
        failures = [
            Finding(int(i), float(c), details={"label": engine.classes[int(y)], "predicted": engine.classes[int(q)]},
                    evidence=Evidence("prediction", ("test", int(i))))
            for i, c, y, q, ok in zip(indices, confidence, labels, predicted, correct) if not ok]
        failures = worst_first(failures)
        return CheckResult("accuracy", accuracy, threshold, ">=", len(indices), failures,
                           passed=accuracy >= threshold, extra={"value_meaning": "confidence of the wrong prediction"})

    def _per_class(self, classes, labels, correct, threshold) -> CheckResult:
        failures, worst = [], 1.0
        for c, name in enumerate(classes):
            mask = labels == c
            if not mask.any():
                continue
            accuracy = correct[mask].float().mean().item()
            worst = min(worst, accuracy)
            if accuracy < threshold:
                failures.append(Finding(c, accuracy, kind="class", details={"name": name, "n": int(mask.sum())}))
        failures = worst_first(failures, lowest=True)
        return CheckResult("worst class accuracy", worst, threshold, ">=", len(labels), failures,
                           passed=worst >= threshold)
