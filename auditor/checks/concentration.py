"""Checks on where attribution mass falls: "no prediction may rely on a small patch region".

- `saliency_concentration`: per map, the mass share inside its densest square window
  (`max_mass`); over the selection, grouped by predicted class, the excess recurrence of a
  spot (`max_recurrence`): the share of the group's maps whose densest window sits there,
  minus the share of correctly classified examples' maps of that class that peak there too.
  A shortcut shows as a spot the model looks at when it errs and not when it is right. The
  per-map share alone does not separate shortcut from clean models (see rules/shortcuts.yaml).
- `region_mass`: share of attribution mass inside a declared region (border, a corner, a box).

Maps come from `source`: `tfa` (TFA maps on each example's top-`k` proponent training images,
where a patch in the training data shows), `var` or `saliency` (the test image's own map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from auditor.checks.base import Check, CheckResult, Finding, require_top_k
from auditor.checks.registry import register
from auditor.checks.windows import REGIONS, Windows, densest_window, hotspot, region_mask, region_share, window_side
from auditor.schema import Where, bounded

Source = Literal["tfa", "var", "saliency"]


@dataclass(frozen=True)
class Maps:
    """Channel-reduced |attribution| maps `(n, H, W)`; map i belongs to test example `test[i]`
    and, for TFA, lies on training image `train[i]`."""

    values: torch.Tensor
    test: torch.Tensor
    train: torch.Tensor | None


def attribution_maps(engine, indices: torch.Tensor, source: str, method: str | None, k: int) -> Maps:
    """The maps a concentration check measures (NaN/empty maps are reported by the checks)."""
    if source == "tfa":
        results = engine.tfa(indices, k)
        values = torch.cat([r.maps.magnitude for r in results])
        test = torch.cat([torch.full((len(r.train_indices),), r.test_index) for r in results])
        return Maps(values, test, torch.cat([r.train_indices for r in results]))
    saliency = engine.saliency(indices, method, use_var=source == "var")
    return Maps(saliency.magnitude, indices.clone(), None)


def empty_map_findings(engine, maps: Maps, shares: torch.Tensor) -> dict[int, Finding]:
    """A map that is all zeros or not finite cannot be judged: it is a finding, never a pass."""
    findings = {}
    for row in shares.isnan().nonzero().flatten().tolist():
        index = int(maps.test[row])
        reason = "attribution is NaN or Inf" if not torch.isfinite(maps.values[row]).all() else "attribution is all zeros"
        findings[index] = Finding(index, 0.0, details={**_example(engine, index), "reason": reason,
                                                      **_map_details(maps, row, None)})
    return findings


def add_finding(failures: dict[int, Finding], engine, maps: Maps, row: int, share: float,
                reason: str | None = None, window: tuple[int, int, int] | None = None) -> None:
    """One finding per test example: keep its most concentrated offending map."""
    index = int(maps.test[row])
    if index in failures and failures[index].value >= share:
        return
    details = {**_example(engine, index), **({"reason": reason} if reason else {}), **_map_details(maps, row, window)}
    failures[index] = Finding(index, share, details=details)


def seeded_subset(indices: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """At most `size` of `indices`, drawn with a fixed seed (sorted)."""
    if size is None or len(indices) <= size:
        return indices
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed))[:size]
    return indices[order].sort().values


def _example(engine, index: int) -> dict:
    p = engine.predictions
    return {"label": engine.classes[int(p.labels[index])], "predicted": engine.classes[int(p.predicted[index])]}


def _map_details(maps: Maps, row: int, window: tuple[int, int, int] | None) -> dict:
    details = {} if maps.train is None else {"train": int(maps.train[row])}
    if window is not None:
        details["window"] = list(window)
    return details


@dataclass(frozen=True)
class ConcentrationParams:
    source: Source = "tfa"
    method: str | None = None
    window: float = bounded(0.01, 1.0, default=0.15, help="window side as a fraction of the image side")
    max_mass: float = bounded(0.0, 1.0, default=1.0, help="largest mass share one window may hold per map")
    max_recurrence: float | None = bounded(0.0, 1.0, default=None,
                                           help="largest excess share of a class's maps peaking at one spot")
    min_group: int = bounded(1, None, default=10, help="classes with fewer maps are not judged for recurrence")
    k: int = bounded(1, 1000, default=3)
    sample: int | None = bounded(1, None, default=None, help="measure at most this many selected examples")
    reference_size: int = bounded(1, None, default=300, help="correct examples per class in the reference")


@register
class SaliencyConcentration(Check):
    """Per-map densest-window share, plus per-class excess hotspot recurrence."""

    name = "saliency_concentration"
    Params = ConcentrationParams
    description = "attribution mass in the densest window, and hotspots recurring off the object"

    def run(self, engine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        indices = seeded_subset(indices, p.sample, engine.settings.seed)
        maps = attribution_maps(engine, indices, p.source, p.method, require_top_k(engine, p.k))
        height, width = maps.values.shape[1:]
        side = window_side(p.window, min(height, width))
        windows = densest_window(maps.values, side)
        failures = empty_map_findings(engine, maps, windows.share)
        for row in (windows.share > p.max_mass).nonzero().flatten().tolist():
            add_finding(failures, engine, maps, row, float(windows.share[row]), "concentrated",
                        (int(windows.row[row]), int(windows.col[row]), side))
        groups, worst = [], float("nan")
        if p.max_recurrence is not None:
            groups, worst = self._hotspots(engine, maps, windows, side, failures)
        flagged = [g for g in groups if g["flagged"]]
        finite = windows.share[~windows.share.isnan()]
        extra = {"window_px": side, "floor": side * side / (height * width),
                 "median_share": float(finite.median()) if len(finite) else None,
                 "max_share": float(finite.max()) if len(finite) else None,
                 "empty_maps": int(windows.share.isnan().sum()), "n_maps": len(maps.values), "hotspots": groups}
        ordered = sorted(failures.values(), key=lambda f: -f.value)
        if p.max_recurrence is None:
            return CheckResult("max densest-window share", extra["max_share"] or 0.0, p.max_mass, "<=",
                               len(indices), ordered, extra=extra)
        return CheckResult("excess hotspot recurrence", worst, p.max_recurrence, "<=",
                           len(indices), ordered, passed=not flagged, extra=extra)

    def _hotspots(self, engine, maps: Maps, windows, side: int, failures: dict[int, Finding]):
        """Judge each predicted class's maps; members of flagged hotspots become failures."""
        p = self.params
        predicted = engine.predictions.predicted[maps.test]
        groups, worst = [], 0.0
        for c in predicted.unique().tolist():
            rows = (predicted == c).nonzero().flatten()
            if len(rows) < p.min_group:
                continue
            sub = Windows(windows.share[rows], windows.row[rows], windows.col[rows])
            spot = hotspot(sub, self._reference(engine, c, side), side)
            if spot is None:
                continue
            flagged = spot.excess > p.max_recurrence
            worst = max(worst, spot.excess)
            groups.append({"predicted": engine.classes[c], "n_maps": len(rows), "window": [spot.row, spot.col, side],
                           "recurrence": round(spot.recurrence, 4),
                           "reference_recurrence": round(spot.reference_recurrence, 4),
                           "excess": round(spot.excess, 4), "flagged": flagged})
            if flagged:
                for row in rows[spot.members].tolist():
                    add_finding(failures, engine, maps, row, float(windows.share[row]), "recurrent hotspot",
                                (spot.row, spot.col, side))
        return groups, worst

    def _reference(self, engine, c: int, side: int) -> Windows:
        """Densest windows of correctly classified test examples predicted as `c`: where
        attribution normally peaks for that class (same source, at most `reference_size`)."""
        p = self.params
        chosen = (engine.predictions.correct & (engine.predictions.predicted == c)).nonzero().flatten()
        chosen = seeded_subset(chosen, p.reference_size, engine.settings.seed)
        if len(chosen) == 0:
            return Windows(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        return densest_window(attribution_maps(engine, chosen, p.source, p.method, p.k).values, side)


@dataclass(frozen=True)
class RegionParams:
    max_mass: float = bounded(0.0, 1.0, help="largest mass share the region may hold per map")
    region: str = "border"
    box: tuple[float, ...] | None = None
    thickness: float = bounded(0.01, 0.5, default=0.1, help="border width as a fraction of the image side")
    source: Source = "var"
    method: str | None = None
    k: int = bounded(1, 1000, default=3)
    sample: int | None = bounded(1, None, default=None)

    def validate(self, where: Where) -> None:
        if self.box is not None:
            if len(self.box) != 4 or not all(0 <= v <= 1 for v in self.box) or not (
                    self.box[0] < self.box[2] and self.box[1] < self.box[3]):
                raise where.child("box").error(f"box {list(self.box)} is not [top, left, bottom, right] in 0..1",
                                               fix="write e.g. `box: [0.0, 0.0, 0.2, 0.2]` (fractions of the side)")
        elif self.region not in REGIONS:
            raise where.child("region").error(f"unknown region '{self.region}'",
                                              fix=f"use one of: {', '.join(REGIONS)}, or give `box:`")


@register
class RegionMass(Check):
    """Attribution share inside a fixed region: watermark and border shortcuts."""

    name = "region_mass"
    Params = RegionParams
    description = "attribution mass inside a declared region"

    def run(self, engine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        indices = seeded_subset(indices, p.sample, engine.settings.seed)
        maps = attribution_maps(engine, indices, p.source, p.method, p.k)
        height, width = maps.values.shape[1:]
        mask = region_mask(p.box if p.box is not None else p.region, height, width, p.thickness)
        shares = region_share(maps.values, mask)
        failures = empty_map_findings(engine, maps, shares)
        for row in (shares > p.max_mass).nonzero().flatten().tolist():
            add_finding(failures, engine, maps, row, float(shares[row]))
        finite = shares[~shares.isnan()]
        area = float(mask.float().mean())
        return CheckResult(f"max mass in {p.region if p.box is None else 'box'}",
                           float(finite.max()) if len(finite) else 0.0, p.max_mass, "<=", len(indices),
                           sorted(failures.values(), key=lambda f: -f.value),
                           extra={"region_area": area, "median_share": float(finite.median()) if len(finite) else None,
                                  "empty_maps": int(shares.isnan().sum())})
