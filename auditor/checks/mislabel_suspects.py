"""`mislabel_suspects`: training images whose label the model confidently disagrees with,
each explained by the test predictions it moves.

Ranking: the per-example training loss under the image's own label. Chosen by measurement
(benchmarks/efficacy.py): on planted relabels it ranks them better than the influence
signals tried (opponent count AUC 0.93 vs loss 0.99; Grad-Cos self-influence is 1 for every
image), and a user has it for free, so the check adds what loss alone does not give: the
threshold as a probability and a share (scale-free), and for each of the first `explain`
suspects the errors it drives (errors predicted as its label, highest Grad-Cos) and the
correct predictions it opposes (lowest Grad-Cos), with its TFA map for the strongest link.
"""

from __future__ import annotations

import math

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, register
from auditor.spec.checks import MislabelParams

LINKS = 3                # test predictions named per suspect, on each side


@register
class MislabelSuspects(Check):
    Params = MislabelParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        losses = engine.train_losses
        n = len(losses)
        threshold = -math.log(max(p.max_own_prob, 1e-30))      # own-label probability <= max_own_prob
        suspects = (losses >= threshold).nonzero().flatten()
        suspects = suspects[losses[suspects].argsort(descending=True, stable=True)]
        links = self._links(engine, suspects[:p.explain], indices)
        failures = [self._finding(engine, int(j), float(losses[j]), links.get(int(j))) for j in suspects.tolist()]
        share = len(suspects) / max(1, n)
        return CheckResult("suspect share of the training set", share, p.max_share, "<=", len(indices), failures,
                           passed=share <= p.max_share,
                           extra={"suspects": len(suspects), "n_train": n, "explained": min(p.explain, len(suspects)),
                                  "loss_threshold": threshold})

    def _finding(self, engine: AuditEngine, j: int, loss: float, link: dict | None) -> Finding:
        label = engine.classes[int(engine.train_labels[j])]
        details = {"label": label, "own_prob": round(math.exp(-loss), 6), "loss": round(loss, 4)}
        if link is None:
            return Finding(j, loss, kind="train", details=details, evidence=Evidence("loss", ("train", j)))
        details |= {"drives": link["drives"], "opposes": link["opposes"]}
        related = tuple(("test", t, s) for t, s in link["related"])
        return Finding(j, loss, kind="train", details=details, evidence=Evidence(
            "tfa", ("train", j), None, link["map"].abs().sum(0), link["map"], related=related))

    def _links(self, engine: AuditEngine, suspects: torch.Tensor, tests: torch.Tensor) -> dict[int, dict]:
        """For each suspect: the errors predicted as its label it aligns with most, the correct
        predictions it opposes most, and its TFA map for the strongest of those links."""
        if len(suspects) == 0 or len(tests) == 0:
            return {}
        p = engine.predictions
        cos = engine.grad_cos(suspects, tests)
        errors, correct = ~p.correct[tests], p.correct[tests]
        links, pairs = {}, []
        for row, j in enumerate(suspects.tolist()):
            label = int(engine.train_labels[j])
            driven = errors & (p.predicted[tests] == label)
            drives = _extreme(cos[row], driven, largest=True)
            opposes = _extreme(cos[row], correct, largest=False)
            ranked = sorted([(int(tests[c]), round(float(cos[row, c]), 6)) for c in drives + opposes],
                            key=lambda ts: -abs(ts[1]))
            links[j] = {"drives": [int(tests[c]) for c in drives], "opposes": [int(tests[c]) for c in opposes],
                        "related": ranked}
            if ranked:
                pairs.append((ranked[0][0], j))
        maps = engine.tfa_pairs(pairs) if pairs else []
        for (t, j), signed in zip(pairs, maps):
            links[j]["map"] = signed
        return {j: link for j, link in links.items() if "map" in link}


def _extreme(scores: torch.Tensor, mask: torch.Tensor, largest: bool) -> list[int]:
    """Positions of the `LINKS` highest (or lowest) scores where `mask` holds, beyond zero."""
    positions = mask.nonzero().flatten()
    if len(positions) == 0:
        return []
    values = scores[positions]
    order = values.argsort(descending=largest)[:LINKS]
    keep = values[order] > 0 if largest else values[order] < 0
    return positions[order[keep]].tolist()
