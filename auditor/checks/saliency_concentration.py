"""`saliency_concentration`: "no prediction may rely on a small patch region".

Per map, the mass share inside its densest square window (`max_mass`); over the selection,
grouped by predicted class, the excess recurrence of a spot (`max_recurrence`): the share of
the group's maps whose densest window sits there, minus the share of correctly classified
examples' maps of that class that peak there too. A shortcut shows as a spot the model looks
at when it errs and not when it is right (`auditor.checks.hotspots` judges it). With
`min_flip_share`, a spot counts only when filling it changes the errors' predictions; reference
examples that need the spot themselves are left out (a model that predicts the class only with
the mark), and a spot flagged only thanks to that must transfer to other classes' images
(`min_transfer_share`). The per-map share alone does not separate shortcut from clean models
(see rules/shortcuts.yaml). An empty map is a finding unless, in the recurrence judgement alone,
it cannot change the verdict (`hotspots.harmless_empty`: a few maps VAR leaves empty on a
confident ViT then no longer fail a clean model).
"""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, register, worst_first, worst_measured
from auditor.checks.hotspots import densest_windows, find_hotspots, harmless_empty
from auditor.checks.maps import add_finding, over_threshold
from auditor.spec.checks import ConcentrationParams


@register
class SaliencyConcentration(Check):
    """Per-map densest-window share, plus per-class excess hotspot recurrence."""

    Params = ConcentrationParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        measured = densest_windows(engine, indices, p)
        maps, windows, side = measured.maps, measured.windows, measured.side
        failures = over_threshold(engine, maps, windows.share, p.max_mass, "concentrated",
                                  lambda row: (int(windows.row[row]), int(windows.col[row]), side))
        height, width = measured.image_size
        finite = windows.share[~windows.share.isnan()]
        extra = {"window_px": side, "floor": side * side / (height * width),
                 "median_share": float(finite.median()) if len(finite) else None,
                 "max_share": worst_measured(windows.share),
                 "empty_maps": int(windows.share.isnan().sum()), "n_maps": len(maps.magnitude), "hotspots": [],
                 "image_size": [height, width], "unjudged": {}, "judged_classes": 0}
        n = len(measured.indices)
        if p.max_recurrence is None:
            return CheckResult("max densest-window share", extra["max_share"], p.max_mass, "<=", n,
                               worst_first(failures.values()), extra=extra)
        search = find_hotspots(engine, measured, p)
        harmless = harmless_empty(engine, measured, search, p.max_recurrence)
        if p.max_mass >= 1.0:                   # no per-map cut (which could not read an empty map either)
            for index in harmless:
                failures.pop(index, None)
            extra["empty_maps_harmless"] = len(harmless)
        for spot in search.flagged:
            for row in spot.rows:
                add_finding(failures, engine, maps, row, float(windows.share[row]), "recurrent hotspot", spot.window)
        extra |= {"hotspots": [h.as_dict() for h in search.hotspots], "unjudged": search.unjudged,
                  "judged_classes": search.judged}
        return CheckResult("excess hotspot recurrence", search.worst, p.max_recurrence, "<=", n, worst_first(failures.values()),
                           passed=not search.flagged, extra=extra, inconclusive=search.too_few(p.min_group))
