"""`shortcut_carriers`: follow a flagged shortcut hotspot into the training data and name the
training images that carry it.

1. The hotspot is found by the judge `saliency_concentration` uses (`auditor.checks.hotspots`):
   a spot where a class's errors' maps peak far more often than its correct predictions' maps do.
2. Every training image of that class is a candidate. Its evidence is causal (DESIGN.md §7):
   fill the hotspot window with the image's own background (the median colour of its frame)
   and measure how much its own-label logit drops.
3. The drops are judged against the same occlusion on a seeded sample of other classes'
   training images: a carrier's drop is a robust z-score above `min_z` (median and MAD of
   the reference; scale-free, whatever the dataset size).

The failing list holds the carriers (most dependent first) with the window and their
own-label input × gradient map: on planted carriers its peak lies on the mark in 96-100% of
the runs where the shortcut is caught (mean 0.89 over all runs), the plain gradient's in
0.62 and TFA's (for the shortcut error it aligns with most) in only 0.14 (benchmarks/efficacy.py,
RESULTS.md "TFA against its baseline"). The metric is the largest share of a class's training
images that carry its spot.
"""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Evidence, Finding, register, worst_first
from auditor.checks.hotspots import Hotspot, Measured, densest_windows, find_hotspots
from auditor.checks.occlusion import occlude
from auditor.checks.robust import robust_z
from auditor.sampling import seeded_draw
from auditor.spec.checks import CarrierParams

MAPS_KEPT = 100          # carriers whose map is carried as evidence (the report draws a few)
MAP_METHOD = "input_x_gradient"     # what localises the mark on carriers best (benchmarks/efficacy.py)


def occlusion_drops(engine: AuditEngine, indices: torch.Tensor, window: tuple[int, int, int],
                    batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Per training image: its own-label logit, and the drop of that logit when the window is occluded."""
    logits, drops = [], []
    for start in range(0, len(indices), batch):
        images, labels = engine.train_batch(indices[start:start + batch])
        rows = torch.arange(len(labels))
        plain = engine.logits(images)[rows, labels]
        logits.append(plain)
        drops.append(plain - engine.logits(occlude(images, window))[rows, labels])
    empty = torch.zeros(0)
    return (torch.cat(logits), torch.cat(drops)) if logits else (empty, empty)


@register
class ShortcutCarriers(Check):
    Params = CarrierParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        measured = densest_windows(engine, indices, p)
        search = find_hotspots(engine, measured, p)
        failures: list[Finding] = []
        groups = []
        for spot in search.flagged:
            found, group = self._carriers(engine, spot, measured)
            failures += found
            groups.append(group)
        worst = max((g["carrier_share"] for g in groups), default=0.0)
        failures = worst_first(failures)
        extra = {"hotspots": [h.as_dict() for h in search.hotspots], "carriers": groups,
                 "image_size": measured.image_size}
        if not search.flagged:
            extra["note"] = "no shortcut hotspot flagged on the test side"
        return CheckResult("carrier share of the class", worst, p.max_carrier_share, "<=", len(measured.indices),
                           failures, passed=worst <= p.max_carrier_share, extra=extra,
                           inconclusive=search.too_few(p.min_group))     # no test-side hotspot could be judged

    def _carriers(self, engine: AuditEngine, spot: Hotspot, measured: Measured) -> tuple[list[Finding], dict]:
        """The training images of the hotspot's class whose own prediction depends on the spot."""
        p = self.params
        c = engine.classes.index(spot.predicted)
        window = spot.window
        labels = engine.train_labels
        candidates = (labels == c).nonzero().flatten()
        others = (labels != c).nonzero().flatten()
        reference = others[seeded_draw(len(others), p.carrier_reference, engine.settings.seed)]
        ref_logits, ref_drops = occlusion_drops(engine, reference, window)
        _, drops = occlusion_drops(engine, candidates, window)
        if len(ref_drops):  # scale at least 1% of a typical logit: below that a drop is noise
            z = robust_z(drops, ref_drops, max(0.01 * float(ref_logits.abs().median()), 1e-6))
        else:               # a training set of one class: nothing to compare against
            z = torch.zeros_like(drops)
        chosen = (z > p.min_z).nonzero().flatten()
        chosen = chosen[z[chosen].argsort(descending=True)]
        carriers = candidates[chosen]
        errors = dict.fromkeys(int(measured.maps.test[row]) for row in spot.rows)   # its members, in order
        related = tuple(("test", t, 1.0) for t in list(errors)[:3])
        maps = self._maps(engine, carriers[:MAPS_KEPT], c)
        found = []
        for j, row in zip(carriers.tolist(), chosen.tolist()):
            magnitude, signed = maps.get(int(j), (None, None))
            found.append(Finding(int(j), float(z[row]), kind="train", details={
                "label": engine.classes[c], "window": list(window), "logit_drop": round(float(drops[row]), 4),
                "hotspot_of": spot.predicted}, evidence=Evidence("occlusion", ("train", int(j)), method=MAP_METHOD,
                                                                 magnitude=magnitude, signed=signed, window=window,
                                                                 related=related)))
        share = len(carriers) / max(1, len(candidates))
        return found, {"class": spot.predicted, "window": list(window), "candidates": len(candidates),
                       "carriers": len(carriers), "carrier_share": round(share, 4),
                       "reference_drop_median": float(ref_drops.median()) if len(ref_drops) else None}

    def _maps(self, engine: AuditEngine, carriers: torch.Tensor, c: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Own-label input × gradient maps of the first carriers: what the panel draws with the window."""
        if len(carriers) == 0:
            return {}
        images, _ = engine.train_batch(carriers)
        signed = engine.attribute(images, torch.full((len(carriers),), c), MAP_METHOD)
        return {int(j): (m.abs().sum(0), m) for j, m in zip(carriers.tolist(), signed)}
