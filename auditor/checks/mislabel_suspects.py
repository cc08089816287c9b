"""`mislabel_suspects`: training images whose label their neighbours in the model's own
representations contradict, each with the label they suggest and the test predictions it moves.

Signal: the label vote of each image's `neighbours` nearest training images, read at two depths
of the model (`auditor.attribution.neighbours`): the feature map halfway through the network and
the input of the classifier head. A model that fits its training labels drives the loss of a
memorised mislabel toward 0, so the loss ranks planted relabels poorly on fitted models
(benchmarks/label_errors.py, RESULTS.md); the mid-depth map keeps resembling the true class
(the reader memorisation does not corrupt: on a ResNet-18 that fit relabelled digits it ranks them
at AUC 0.9997, the head's input at 0.87), and the head's input separates best where the model
is under-fit. An image is listed when, at either depth, at least `min_suggested_share` of its
neighbours agree on one other label and its own label's share is low: at most `max_own_share`, or
`max_own_z` robust standard deviations or more below the median share of its class (a class whose
images agree tightly, such as digits, shows a relabelled cluster that vouches for itself this way;
on Fashion-MNIST's overlapping shirts the absolute cut does the work). Both are shares of the
neighbours and z-scores within a class: scale-free, the same on 1.4k, 3k, 5k and 20k images,
under-fit and fitted. Suspects are ranked by the two depths' votes averaged: own-label share, then
the suggested label's share, then the loss. The first `explain` are explained: the training images they most resemble (with
their labels), the errors they drive (predicted as their label, highest Grad-Cos), the correct
predictions they oppose (lowest Grad-Cos), and the TFA map of the strongest of those links.
"""

from __future__ import annotations

import math

import torch

from auditor.attribution.neighbours import Neighbours
from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, register
from auditor.checks.robust import within_class_z
from auditor.spec.checks import MislabelParams

LINKS = 3                # test predictions named per suspect, on each side
RESEMBLES = 5            # neighbours named per suspect
OWN_SCALE_FLOOR = 0.15   # a class whose images all agree (MAD 0) is judged against this spread of shares


@register
class MislabelSuspects(Check):
    Params = MislabelParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        labels = engine.train_labels
        neighbours = engine.neighbours(p.neighbours, p.layer)
        own = neighbours.own_share(labels)
        suggested, support = neighbours.suggested(labels)
        losses = engine.train_losses
        found, own_z = contradicted(neighbours, labels, p)
        suspects = found.nonzero().flatten()
        suspects = suspects[strongest_first(own[suspects], support[suspects], losses[suspects])]
        links = self._links(engine, suspects[:p.explain], indices)
        failures = []
        for j in suspects.tolist():
            resembles = [(int(i), float(s)) for i, s in zip(neighbours.indices[j, :RESEMBLES],
                                                            neighbours.similarity[j, :RESEMBLES])]
            failures.append(self._finding(engine, j, float(own[j]), float(own_z[j]), int(suggested[j]),
                                          float(support[j]), float(losses[j]), resembles, links.get(j)))
        n = len(labels)
        share = len(suspects) / max(1, n)
        return CheckResult("suspect share of the training set", share, p.max_share, "<=", n, failures,
                           passed=share <= p.max_share,
                           extra={"suspects": len(suspects), "n_train": n, "explained": min(p.explain, len(suspects)),
                                  "neighbours": neighbours.indices.shape[1], "max_own_share": p.max_own_share,
                                  "max_own_z": p.max_own_z,
                                  "min_suggested_share": p.min_suggested_share,
                                  "suggested": suggestion_counts(engine.classes, labels[suspects],
                                                                 suggested[suspects])})

    def _finding(self, engine: AuditEngine, j: int, own: float, own_z: float, suggested: int, support: float,
                 loss: float, resembles: list[tuple[int, float]], link: dict | None) -> Finding:
        classes = engine.classes
        details = {"label": classes[int(engine.train_labels[j])], "suggested": classes[suggested],
                   "own_share": round(own, 4), "own_z": round(own_z, 2), "suggested_share": round(support, 4),
                   "own_prob": round(math.exp(-loss), 6), "loss": round(loss, 4),
                   "resembles": [{"train": i, "label": classes[int(engine.train_labels[i])], "similarity": round(s, 4)}
                                 for i, s in resembles]}
        neighbours = tuple(("train", i, round(s, 6)) for i, s in resembles[:LINKS])
        if link is None:
            return Finding(j, 1.0 - own, kind="train", details=details,
                           evidence=Evidence("neighbours", ("train", j), related=neighbours))
        details |= {"drives": link["drives"], "opposes": link["opposes"]}
        tests = tuple(("test", t, s) for t, s in link["related"])
        return Finding(j, 1.0 - own, kind="train", details=details, evidence=Evidence(
            "tfa", ("train", j), magnitude=link["map"].abs().sum(0), signed=link["map"],
            related=tests[:1] + neighbours + tests[1:]))

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


def contradicted(neighbours: Neighbours, labels: torch.Tensor, p: MislabelParams) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n,)` whether, in at least one representation, at least `min_suggested_share` of an image's
    neighbours agree on one other label while its own label's share is at most `max_own_share` or
    at least `-max_own_z` robust standard deviations below its class's median; and `(n,)` the
    lowest such z-score over the representations."""
    found = torch.zeros(len(labels), dtype=torch.bool)
    lowest = torch.full((len(labels),), float("inf"))
    for part in neighbours.parts or (neighbours,):
        own = part.own_share(labels)
        z = within_class_z(own, labels, OWN_SCALE_FLOOR)
        low = own <= p.max_own_share
        if p.max_own_z is not None:
            low |= z <= p.max_own_z
        found |= low & (part.suggested(labels)[1] >= p.min_suggested_share)
        lowest = torch.minimum(lowest, z)
    return found, lowest


def strongest_first(own: torch.Tensor, support: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Order: lowest own-label share, then highest suggested-label share, then highest loss."""
    order = loss.argsort(descending=True, stable=True)
    order = order[support[order].argsort(descending=True, stable=True)]
    return order[own[order].argsort(stable=True)]


def suggestion_counts(classes: tuple[str, ...], given: torch.Tensor, suggested: torch.Tensor) -> list[dict]:
    """The (given → suggested) label pairs among the suspects, most frequent first: a systematic
    swap shows as one large pair, random noise as many small ones."""
    pairs: dict[tuple[int, int], int] = {}
    for g, s in zip(given.tolist(), suggested.tolist()):
        pairs[g, s] = pairs.get((g, s), 0) + 1
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))
    return [{"label": classes[g], "suggested": classes[s], "count": c} for (g, s), c in ranked]


def _extreme(scores: torch.Tensor, mask: torch.Tensor, largest: bool) -> list[int]:
    """Positions of the `LINKS` highest (or lowest) scores where `mask` holds, beyond zero."""
    positions = mask.nonzero().flatten()
    if len(positions) == 0:
        return []
    values = scores[positions]
    order = values.argsort(descending=largest)[:LINKS]
    keep = values[order] > 0 if largest else values[order] < 0
    return positions[order[keep]].tolist()
