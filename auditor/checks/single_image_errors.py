"""`single_image_errors`: "no misclassification may be driven by a single training image".

A training image that alone drives an error (a copy of the test image under a wrong label,
a leaked duplicate) stands apart from every other proponent and explains the error by itself:
1. its Grad-Cos with the error is far above the next one's: the gap (top-1 minus top-2 score)
   as a robust z-score against the gaps of all selected examples, above `min_z`; the scale is
   at least 0.01, below which Grad-Cos differences are projection noise (≈ 1/√4096);
2. its lead, (top-1 − top-2) / (1 − top-2), is at least `min_lead`: it closes most of the
   distance to a perfect match that the next image leaves open.
Both are scale-free: no count or score depends on the dataset's size. In the efficacy runs
(benchmarks/RESULTS.md, "Efficacy") errors driven by planted copies had lead 1.0 and gap z
8.4-40; the other errors that reached z above 10 had leads 0.29-0.77 (an under-trained model's
errors align with many training images at once, so their gaps are tiny and a small lead
stands out), none reached the lead of 0.8, and the top-1 *share* of `influence_dominance` did
not separate the two (copies 0.29-0.44, others up to 0.35). Each finding names the driver and
its TFA map.
"""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, example_details, ranked, register, worst_first
from auditor.checks.base import related_train, worst_measured
from auditor.checks.robust import robust_z
from auditor.spec.checks import SingleImageParams

GAP_FLOOR = 0.01         # Grad-Cos differences below this are projection noise: the scale is at least this


def lead(scores: torch.Tensor) -> torch.Tensor:
    """`(m, k)` proponent scores (best first) → (top-1 − top-2) / (1 − top-2), 1 for a perfect match."""
    return (scores[:, 0] - scores[:, 1]) / (1 - scores[:, 1]).clamp_min(1e-6)


def driver_z(scores: torch.Tensor) -> torch.Tensor:
    """`(m, k)` proponent scores (best first) → robust z-score of each row's top-1 − top-2 gap."""
    gaps = scores[:, 0] - scores[:, 1]
    finite = gaps[torch.isfinite(gaps)]
    if len(finite) == 0:
        return torch.full_like(gaps, float("nan"))
    return robust_z(gaps, finite, GAP_FLOOR)


@register
class SingleImageErrors(Check):
    Params = SingleImageParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        train, scores = ranked(engine, indices, p.k)
        z, leads = driver_z(scores), lead(scores)
        flagged = (~((z <= p.min_z) | (leads < p.min_lead))).nonzero().flatten()   # NaN is a finding, never a pass
        maps = {r.test_index: r.maps for r in engine.tfa(indices[flagged], 1)} if len(flagged) else {}
        failures = [self._finding(engine, int(indices[row]), train[row], scores[row], float(z[row]),
                                  float(leads[row]), maps[int(indices[row])]) for row in flagged.tolist()]
        failures = worst_first(failures)
        # NaN when no z-score could be measured; 0 when some were but no error's top proponent leads
        value = worst_measured(torch.where((leads >= p.min_lead) | z.isnan(), z, torch.zeros_like(z)))
        return CheckResult("max driver z-score", value,
                           p.min_z, "<=", len(indices), failures,
                           extra={"median_gap": float((scores[:, 0] - scores[:, 1]).median()) if len(indices) else None})

    @staticmethod
    def _finding(engine: AuditEngine, index: int, train: torch.Tensor, scores: torch.Tensor, z: float,
                 lead_: float, maps) -> Finding:
        """The error, its driver (top-1 proponent) and the driver's TFA map for it."""
        driver = int(train[0])
        details = {**example_details(engine, index), "driver": driver,
                   "driver_label": engine.classes[int(engine.train_labels[driver])],
                   "top1_score": round(float(scores[0]), 6), "lead": round(lead_, 4),
                   "gap": round(float(scores[0] - scores[1]), 6)}
        if z != z:
            details["reason"] = "proponent scores are NaN"
        related = (("test", index, 1.0),) + related_train(train[1:], scores[1:])
        return Finding(index, z, details=details, evidence=Evidence(
            "tfa", ("train", driver), magnitude=maps.magnitude[0], signed=maps.signed[0], related=related))
