"""`saliency_concentration`: "no prediction may rely on a small patch region".

Per map, the mass share inside its densest square window (`max_mass`); over the selection,
grouped by predicted class, the excess recurrence of a spot (`max_recurrence`): the share of
the group's maps whose densest window sits there, minus the share of correctly classified
examples' maps of that class that peak there too. A shortcut shows as a spot the model looks
at when it errs and not when it is right. With `min_flip_share`, a spot counts only when filling
it changes the errors' predictions; reference examples that need the spot themselves are left
out (a model that predicts the class only with the mark), and a spot flagged only thanks to
that must transfer to other classes' images (`min_transfer_share`). The per-map share alone
does not separate shortcut from clean models (see rules/shortcuts.yaml).
"""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, Finding, register
from auditor.checks.maps import Maps, add_finding, attribution_maps, measured_maps, over_threshold, seeded_subset
from auditor.checks.occlusion import flip_share, flips, transfer_share
from auditor.checks.windows import Hotspot, Windows, densest_window, hotspot, hotspot_at, subset, window_side
from auditor.spec.checks import ConcentrationParams


def too_few(unjudged: dict[str, int], judged: int, min_group: int) -> str | None:
    """Why the recurrence could not be judged: every predicted class had fewer than `min_group`
    maps (None when at least one class was judged, or there were no maps)."""
    if judged or not unjudged:
        return None
    name, n = max(unjudged.items(), key=lambda item: item[1])
    return (f"no predicted class has the {min_group} maps recurrence needs (most: {n} predicted {name}); "
            f"audit a larger test set or lower `min_group`")


@register
class SaliencyConcentration(Check):
    """Per-map densest-window share, plus per-class excess hotspot recurrence."""

    Params = ConcentrationParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        indices, maps = measured_maps(engine, indices, p)
        height, width = maps.values.shape[1:]
        side = window_side(p.window, min(height, width))
        windows = densest_window(maps.values, side)
        failures = over_threshold(engine, maps, windows.share, p.max_mass, "concentrated",
                                  lambda row: (int(windows.row[row]), int(windows.col[row]), side))
        groups, worst, unjudged, judged = [], float("nan"), {}, 0
        if p.max_recurrence is not None:
            groups, worst, unjudged, judged = self._hotspots(engine, maps, windows, side, failures)
        flagged = [g for g in groups if g["flagged"]]
        finite = windows.share[~windows.share.isnan()]
        extra = {"window_px": side, "floor": side * side / (height * width),
                 "median_share": float(finite.median()) if len(finite) else None,
                 "max_share": float(finite.max()) if len(finite) else None,
                 "empty_maps": int(windows.share.isnan().sum()), "n_maps": len(maps.values), "hotspots": groups,
                 "image_size": [height, width], "unjudged": unjudged, "judged_classes": judged}
        ordered = sorted(failures.values(), key=lambda f: -f.value)
        if p.max_recurrence is None:
            return CheckResult("max densest-window share", extra["max_share"] or 0.0, p.max_mass, "<=",
                               len(indices), ordered, extra=extra)
        return CheckResult("excess hotspot recurrence", worst, p.max_recurrence, "<=",
                           len(indices), ordered, passed=not flagged, extra=extra,
                           inconclusive=too_few(unjudged, extra["judged_classes"], p.min_group))

    def _hotspots(self, engine: AuditEngine, maps: Maps, windows, side: int, failures: dict[int, Finding]):
        """Judge each predicted class's maps; members of flagged hotspots become failures. Returns
        the groups, the worst excess, the classes too small to judge (name → maps) and how many were judged."""
        p = self.params
        predicted = engine.predictions.predicted[maps.test]
        groups, worst, unjudged = [], 0.0, {}
        for c in predicted.unique().tolist():
            rows = (predicted == c).nonzero().flatten()
            if len(rows) < p.min_group:
                unjudged[engine.classes[c]] = len(rows)
                continue
            sub = subset(windows, rows)
            reference_tests, reference = self._reference(engine, c, side)
            spot = hotspot(sub, reference, side)
            if spot is None:
                continue
            relying, plain = 0.0, spot
            if p.min_flip_share is not None:
                spot, relying = self._decontaminated(engine, c, sub, reference_tests, reference, spot, side)
            window = (spot.row, spot.col, side)
            group = {"predicted": engine.classes[c], "n_maps": len(rows), "window": list(window),
                     "recurrence": round(spot.recurrence, 4), "reference_recurrence": round(spot.reference_recurrence, 4),
                     "excess": round(spot.excess, 4), "reference_relying": round(relying, 4)}
            confirmed = True
            if p.min_flip_share is not None and spot.excess > p.max_recurrence:
                members = maps.test[rows[spot.members]].unique()
                group["flip_share"] = round(flip_share(engine, members, window, c), 4)
                confirmed = group["flip_share"] >= p.min_flip_share
                if plain.excess <= p.max_recurrence:     # only the thinned reference flags it: it must transfer
                    group["transfer_share"] = round(transfer_share(engine, members, window, c, engine.settings.seed), 4)
                    confirmed = confirmed and group["transfer_share"] >= p.min_transfer_share
                group["confirmed"] = confirmed
            flagged = confirmed and spot.excess > p.max_recurrence
            if confirmed:
                worst = max(worst, spot.excess)
            groups.append({**group, "flagged": flagged})
            if flagged:
                for row in rows[spot.members].tolist():
                    add_finding(failures, engine, maps, row, float(windows.share[row]), "recurrent hotspot", window)
        judged = len(predicted.unique()) - len(unjudged)
        return groups, worst, unjudged, judged

    def _reference(self, engine: AuditEngine, c: int, side: int) -> tuple[torch.Tensor, Windows]:
        """Correctly classified test examples predicted as `c` (at most `reference_size`) and
        their densest windows: where attribution normally peaks for that class (same source)."""
        p = self.params
        chosen = (engine.predictions.correct & (engine.predictions.predicted == c)).nonzero().flatten()
        chosen = seeded_subset(chosen, p.reference_size, engine.settings.seed)
        if len(chosen) == 0:
            return chosen, Windows(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        return chosen, densest_window(attribution_maps(engine, chosen, p.source, p.method, p.k).values, side)

    def _decontaminated(self, engine: AuditEngine, c: int, group: Windows, reference_tests: torch.Tensor,
                        reference: Windows, spot: Hotspot, side: int) -> tuple[Hotspot, float]:
        """The spot judged against reference examples that do not themselves rely on it.

        A "correct" prediction whose class the filled spot takes away relied on the spot: when a
        shortcut replaced the class's own features (every Shirt prediction needs the mark), the
        reference peaks at the spot as often as the errors and hides it. At the found spot and at
        the group's most recurrent spot, reference examples whose prediction the filled spot
        changes are left out; the larger excess wins. Returns it and the share left out there
        (0 when the full reference judged it). A class's own essential part (a collar every Coat
        prediction needs) passes this too, so a spot only the thinned reference flags must also
        transfer (`min_transfer_share`: planted marks 0.50-0.93, parts 0.01-0.21, efficacy runs).
        """
        candidates = {(spot.row, spot.col)}
        mode = hotspot(group, subset(reference, torch.zeros(len(reference_tests), dtype=torch.bool)), side)
        if mode is not None:
            candidates.add((mode.row, mode.col))
        best, relying = spot, 0.0
        for row, col in sorted(candidates):
            changed = flips(engine, reference_tests, (row, col, side), c)
            judged = hotspot_at(group, subset(reference, ~changed), row, col, side)
            if judged.excess > best.excess:
                best, relying = judged, float(changed.float().mean()) if len(changed) else 0.0
        return best, relying
