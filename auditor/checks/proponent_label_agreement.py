"""`proponent_label_agreement`: share of the top-`k` proponents whose label equals the
predicted label; low agreement flags predictions supported by off-label training images."""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, example_details, ranked, register, worst_first
from auditor.checks.base import related_train
from auditor.spec.checks import AgreementParams


def label_agreement(proponent_labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """`(m, k)` labels of proponents and `(m,)` predictions → share agreeing per example."""
    return (proponent_labels == predicted[:, None]).float().mean(1)


@register
class ProponentLabelAgreement(Check):
    Params = AgreementParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        train, scores = ranked(engine, indices, self.params.k)
        predicted = engine.predictions.predicted[indices]
        agreement = label_agreement(engine.train_labels[train], predicted)
        failures = [
            Finding(index, float(agreement[row]), details={
                **example_details(engine, index),
                "proponent_labels": ",".join(engine.classes[int(c)] for c in engine.train_labels[train[row]]),
                "proponents": ",".join(map(str, train[row].tolist()))},
                evidence=Evidence("influence", ("test", index), related=related_train(train[row], scores[row])))
            for row, index in enumerate(indices.tolist()) if agreement[row] < self.params.min_agreement]
        failures = worst_first(failures, lowest=True)
        return CheckResult("min proponent label agreement", float(agreement.min()), self.params.min_agreement, ">=",
                           len(indices), failures, extra={"mean_agreement": float(agreement.mean())})
