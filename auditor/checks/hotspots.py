"""The hotspot judge both shortcut checks read: per predicted class, the spot where its maps
peak far more often than its correct predictions' maps do, confirmed (optionally) by filling it.

`densest_windows` measures the maps a rule selects and each map's densest window;
`find_hotspots` judges them class by class and returns `Hotspot`s, the one record
`saliency_concentration` (the test side) and `shortcut_carriers` (the training side) use, and
that reports read through `Hotspot.as_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from auditor.checks.base import AuditEngine
from auditor.checks.maps import Maps, attribution_maps, measured_maps, seeded_subset
from auditor.checks.occlusion import flip_share, flips, located_window, transfer_share
from auditor.checks.windows import Spot, Windows, densest_window, spot_at, subset, top_spot, window_side
from auditor.spec.checks import HotspotParams


@dataclass(frozen=True)
class Measured:
    """The test examples a rule measured, their maps, each map's densest window and its side."""

    indices: torch.Tensor
    maps: Maps
    windows: Windows
    side: int

    @property
    def image_size(self) -> list[int]:
        return list(self.maps.magnitude.shape[1:])


@dataclass(frozen=True)
class Hotspot:
    """One predicted class's most recurrent spot, as judged: its `window` (row, col, side), how
    often the class's maps peak there (`recurrence`) against its correct predictions'
    (`reference_recurrence`), the share of that reference left out because it relies on the spot
    itself, the flip and transfer shares when they were measured, and whether it is `flagged`.
    `rows` are the members: the measured maps that peak there. A flagged spot's `window` is
    moved to where filling it hurts the prediction most (`occlusion.located_window`); the spot
    where the maps recur is then `peak_window`. `set_aside_tried`: what the judgement with the
    reference set aside measured when it did not flag (its window, recurrence and shares)."""

    predicted: str
    n_maps: int
    window: tuple[int, int, int]
    recurrence: float
    reference_recurrence: float
    reference_relying: float
    flagged: bool
    rows: tuple[int, ...] = field(default=(), repr=False)
    flip_share: float | None = None
    transfer_share: float | None = None
    confirmed: bool | None = None
    peak_window: tuple[int, int, int] | None = None
    reference_set_aside: bool = False
    set_aside_tried: dict | None = None

    @property
    def excess(self) -> float:
        return self.recurrence - self.reference_recurrence

    def as_dict(self) -> dict:
        """What results.json, the advice and the report read (shares to 4 decimals; no members)."""
        out = {"predicted": self.predicted, "n_maps": self.n_maps, "window": list(self.window),
               "recurrence": round(self.recurrence, 4), "reference_recurrence": round(self.reference_recurrence, 4),
               "excess": round(self.excess, 4), "reference_relying": round(self.reference_relying, 4)}
        out |= {key: value for key in ("flip_share", "transfer_share", "confirmed")
                if (value := getattr(self, key)) is not None}
        if self.peak_window is not None:
            out["peak_window"] = list(self.peak_window)
        if self.reference_set_aside:
            out["reference_set_aside"] = True
        if self.set_aside_tried is not None:
            out["set_aside_tried"] = self.set_aside_tried
        return out | {"flagged": self.flagged}


@dataclass(frozen=True)
class HotspotSearch:
    """Every judged class's hotspot, the worst confirmed excess, and the classes too small to judge."""

    hotspots: tuple[Hotspot, ...]
    worst: float
    unjudged: dict[str, int]
    judged: int

    @property
    def flagged(self) -> list[Hotspot]:
        return [h for h in self.hotspots if h.flagged]

    def too_few(self, min_group: int) -> str | None:
        """Why the recurrence could not be judged: every predicted class had fewer than `min_group`
        maps (None when at least one class was judged, or there were no maps)."""
        if self.judged or not self.unjudged:
            return None
        name, n = max(self.unjudged.items(), key=lambda item: item[1])
        return (f"no predicted class has the {min_group} maps recurrence needs (most: {n} predicted {name}); "
                f"audit a larger test set or lower `min_group`")


def densest_windows(engine: AuditEngine, indices: torch.Tensor, p: HotspotParams) -> Measured:
    """The rule's maps (seeded, at most `p.sample`) and each map's densest `p.window` window."""
    indices, maps = measured_maps(engine, indices, p)
    height, width = maps.magnitude.shape[1:]
    side = window_side(p.window, min(height, width))
    return Measured(indices, maps, densest_window(maps.magnitude, side), side)


def find_hotspots(engine: AuditEngine, measured: Measured, p: HotspotParams) -> HotspotSearch:
    """Judge each predicted class with at least `p.min_group` maps (the recurrence needs them)."""
    predicted = engine.predictions.predicted[measured.maps.test]
    hotspots, worst, unjudged = [], 0.0, {}
    for c in predicted.unique().tolist():
        rows = (predicted == c).nonzero().flatten()
        if len(rows) < p.min_group:
            unjudged[engine.classes[c]] = len(rows)
            continue
        found = _judge(engine, measured, rows, c, p)
        if found is None:
            continue
        if found.confirmed is not False:
            worst = max(worst, found.excess)
        hotspots.append(found)
    return HotspotSearch(tuple(hotspots), worst, unjudged, len(predicted.unique()) - len(unjudged))


def harmless_empty(engine: AuditEngine, measured: Measured, search: HotspotSearch, max_recurrence: float) -> list[int]:
    """Test examples whose map is empty (all zeros, NaN) yet cannot change the verdict.

    A class with fewer than `min_group` maps, empty ones counted, is not judged whatever they
    show (it is reported as unjudged). In a judged class recurrence is a share of the usable
    maps, so `e` empty maps beside `n` usable ones could raise any spot's excess by at most
    e / (n + e) had they all peaked there: harmless when the class is not flagged and its
    hotspot's excess plus that bound stays within `max_recurrence`. Otherwise an empty map stays
    a finding (a gate never passes on maps it could not read and that matter).
    """
    predicted = engine.predictions.predicted[measured.maps.test]
    empty = measured.windows.share.isnan()
    spots = {h.predicted: h for h in search.hotspots}
    harmless: list[int] = []
    for c in predicted[empty].unique().tolist():
        name, group = engine.classes[c], predicted == c
        spot = spots.get(name)
        e, n = int((group & empty).sum()), int((group & ~empty).sum())
        judged_within = (spot.excess if spot is not None else 0.0) + e / (n + e) <= max_recurrence
        if name in search.unjudged or (judged_within and not (spot is not None and spot.flagged)):
            harmless += measured.maps.test[group & empty].tolist()
    return harmless


def _judge(engine: AuditEngine, measured: Measured, rows: torch.Tensor, c: int, p: HotspotParams) -> Hotspot | None:
    """Class `c`'s hotspot among the maps at `rows`, confirmed by filling it when `min_flip_share` is set."""
    side, group = measured.side, subset(measured.windows, rows)
    reference_tests, reference = _reference(engine, c, side, p)
    spot = top_spot(group, reference, side)
    if spot is None:
        return None
    relying, plain = 0.0, spot
    if p.min_flip_share is not None:
        spot, relying = _decontaminated(engine, c, group, reference_tests, reference, spot, side)
    window = (spot.row, spot.col, side)
    shares: dict = {}
    confirmed = True
    members = measured.maps.test[rows[spot.members]].unique()
    if p.min_flip_share is not None and spot.excess > p.max_recurrence:
        shares["flip_share"] = round(flip_share(engine, members, window, c), 4)
        confirmed = shares["flip_share"] >= p.min_flip_share
        if plain.excess <= p.max_recurrence:     # only the thinned reference flags it: it must transfer
            shares["transfer_share"] = round(transfer_share(engine, members, window, c, engine.settings.seed), 4)
            confirmed = confirmed and shares["transfer_share"] >= p.min_transfer_share
        shares["confirmed"] = confirmed
    flagged = confirmed and spot.excess > p.max_recurrence
    if not flagged and p.min_flip_share is not None:
        aside, tried = _set_aside(engine, measured, rows, c, group, p, tested=window if "confirmed" in shares else None)
        if aside is not None:
            return aside
        if tried is not None:
            shares["set_aside_tried"] = tried
    if flagged:
        window, peak = _located(engine, members, window, c)
        if peak is not None:
            shares["peak_window"] = peak
    return Hotspot(engine.classes[c], len(rows), window, spot.recurrence, spot.reference_recurrence, relying,
                   flagged, tuple(rows[spot.members].tolist()), **shares)


NO_REFERENCE = Windows(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


def _located(engine: AuditEngine, members: torch.Tensor, window: tuple[int, int, int],
             c: int) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """A flagged spot's reported window: where the mark is (`occlusion.located_window`), not where
    the maps lean on its edge; and the spot where the maps recur when that differs (else None)."""
    located = located_window(engine, members, window, c, engine.settings.seed)
    return (located, window) if located != window else (window, None)


def _set_aside(engine: AuditEngine, measured: Measured, rows: torch.Tensor, c: int, group: Windows,
               p: HotspotParams, tested: tuple[int, int, int] | None = None) -> tuple[Hotspot | None, dict | None]:
    """The group's most recurrent spot, flagged with the reference set aside when the errors need
    it and it turns other classes' images into the class (else None), and what it measured of the
    spot (for the report; None when it had nothing to test).

    A model that checks the mark's corner for every decision of its class (unmarked shirts too)
    peaks there as often when right as when wrong, so no reference, thinned or not, shows an
    excess: two ResNet-18s that turned 90% of marked images into Shirt passed this way
    (benchmarks/architectures.py). Filling the spot must still change the errors
    (`min_flip_share`) and pasting it must still make the class (`min_transfer_share`, which keeps
    a class's own parts out); the spot's recurrence is then its excess. `tested`: the window the
    reference-based judgement already filled and pasted without confirming it (not tried again:
    the same members give the same shares).
    """
    side = measured.side
    mode = top_spot(group, NO_REFERENCE, side)
    window = None if mode is None else (mode.row, mode.col, side)
    if mode is None or mode.recurrence <= p.max_recurrence or window == tested:
        return None, None
    members = measured.maps.test[rows[mode.members]].unique()
    tried = {"window": list(window), "recurrence": round(mode.recurrence, 4),
             "flip_share": round(flip_share(engine, members, window, c), 4)}
    if tried["flip_share"] < p.min_flip_share:
        return None, tried
    tried["transfer_share"] = round(transfer_share(engine, members, window, c, engine.settings.seed), 4)
    if tried["transfer_share"] < p.min_transfer_share:
        return None, tried
    located, peak = _located(engine, members, window, c)
    return Hotspot(engine.classes[c], len(rows), located, mode.recurrence, 0.0, 1.0, True,
                   tuple(rows[mode.members].tolist()), flip_share=tried["flip_share"],
                   transfer_share=tried["transfer_share"], confirmed=True, peak_window=peak,
                   reference_set_aside=True), tried


def _reference(engine: AuditEngine, c: int, side: int, p: HotspotParams) -> tuple[torch.Tensor, Windows]:
    """Correctly classified test examples predicted as `c` (at most `reference_size`) and
    their densest windows: where attribution normally peaks for that class (same source)."""
    chosen = (engine.predictions.correct & (engine.predictions.predicted == c)).nonzero().flatten()
    chosen = seeded_subset(chosen, p.reference_size, engine.settings.seed)
    if len(chosen) == 0:
        return chosen, NO_REFERENCE
    return chosen, densest_window(attribution_maps(engine, chosen, p.source, p.method, p.k).magnitude, side)


def _decontaminated(engine: AuditEngine, c: int, group: Windows, reference_tests: torch.Tensor,
                    reference: Windows, spot: Spot, side: int) -> tuple[Spot, float]:
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
    mode = top_spot(group, NO_REFERENCE, side)
    if mode is not None:
        candidates.add((mode.row, mode.col))
    best, relying = spot, 0.0
    for row, col in sorted(candidates):
        changed = flips(engine, reference_tests, (row, col, side), c)
        judged = spot_at(group, subset(reference, ~changed), row, col, side)
        if judged.excess > best.excess:
            best, relying = judged, float(changed.float().mean()) if len(changed) else 0.0
    return best, relying
