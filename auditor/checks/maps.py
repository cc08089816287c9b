"""The attribution maps the map-based checks measure, and findings that carry them.

Maps come from a rule's `source`: `tfa` (TFA maps on each example's top-`k` proponent
training images, where a patch in the training data shows), `var` or `saliency` (the test
image's own map, with the rule's `method` or the settings' default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from auditor.checks.base import AuditEngine, Evidence, Finding, example_details
from auditor.sampling import seeded_draw


@dataclass(frozen=True)
class Maps:
    """Channel-reduced |attribution| `magnitude (n, H, W)` and `signed (n, C, H, W)` maps; map i
    belongs to test example `test[i]` and, for TFA, lies on training image `train[i]`."""

    magnitude: torch.Tensor
    signed: torch.Tensor
    test: torch.Tensor
    train: torch.Tensor | None
    source: str
    method: str | None

    def evidence(self, row: int, window: tuple[int, int, int] | None = None,
                 region: str | tuple[float, ...] | None = None) -> Evidence:
        """What map `row` shows, on which image, with the window or region measured on it."""
        image = ("test", int(self.test[row])) if self.train is None else ("train", int(self.train[row]))
        related = () if self.train is None else (("test", int(self.test[row]), 1.0),)
        return Evidence(self.source, image, method=self.method, magnitude=self.magnitude[row], signed=self.signed[row],
                        window=window, region=region, related=related)


def attribution_maps(engine: AuditEngine, indices: torch.Tensor, source: str, method: str | None, k: int) -> Maps:
    """The maps a map-based check measures (NaN/empty maps are reported by the checks)."""
    if source == "tfa":
        results = engine.tfa(indices, k)
        signed = torch.cat([r.maps.signed for r in results])
        test = torch.cat([torch.full((len(r.train_indices),), r.test_index) for r in results])
        return Maps(signed.abs().sum(1), signed, test, torch.cat([r.train_indices for r in results]), source, None)
    method = method or engine.attribution.saliency
    saliency = engine.saliency(indices, method, use_var=source == "var")
    return Maps(saliency.magnitude, saliency.signed, indices.clone(), None, source, method)


def measured_maps(engine: AuditEngine, indices: torch.Tensor, params: Any) -> tuple[torch.Tensor, Maps]:
    """The (seeded, at most `params.sample`) examples a map-based rule measures, and their maps."""
    indices = seeded_subset(indices, params.sample, engine.settings.seed)
    return indices, attribution_maps(engine, indices, params.source, params.method, params.k)


def over_threshold(engine: AuditEngine, maps: Maps, shares: torch.Tensor, max_mass: float, reason: str | None = None,
                   window_of: Callable[[int], tuple[int, int, int]] | None = None,
                   region: str | tuple[float, ...] | None = None) -> dict[int, Finding]:
    """Findings for empty/NaN maps and for maps whose share exceeds `max_mass` (one per test example)."""
    failures = empty_map_findings(engine, maps, shares)
    for row in (shares > max_mass).nonzero().flatten().tolist():
        add_finding(failures, engine, maps, row, float(shares[row]), reason,
                    window_of(row) if window_of else None, region)
    return failures


def empty_map_findings(engine: AuditEngine, maps: Maps, shares: torch.Tensor) -> dict[int, Finding]:
    """A map that is all zeros or not finite cannot be judged: it is a finding, never a pass."""
    findings = {}
    for row in shares.isnan().nonzero().flatten().tolist():
        index = int(maps.test[row])
        reason = "attribution is NaN or Inf" if not torch.isfinite(maps.magnitude[row]).all() else "attribution is all zeros"
        findings[index] = Finding(index, 0.0, details={**example_details(engine, index), "reason": reason,
                                                      **_map_details(maps, row, None)}, evidence=maps.evidence(row))
    return findings


def add_finding(failures: dict[int, Finding], engine: AuditEngine, maps: Maps, row: int, share: float,
                reason: str | None = None, window: tuple[int, int, int] | None = None,
                region: str | tuple[float, ...] | None = None) -> None:
    """One finding per test example: keep its most concentrated offending map."""
    index = int(maps.test[row])
    if index in failures and failures[index].value >= share:
        return
    details = {**example_details(engine, index), **({"reason": reason} if reason else {}),
               **_map_details(maps, row, window)}
    failures[index] = Finding(index, share, details=details, evidence=maps.evidence(row, window, region))


def seeded_subset(indices: torch.Tensor, size: int | None, seed: int) -> torch.Tensor:
    """At most `size` of `indices`, drawn with a fixed seed (sorted)."""
    if size is None or len(indices) <= size:
        return indices
    return indices[seeded_draw(len(indices), size, seed)].sort().values


def _map_details(maps: Maps, row: int, window: tuple[int, int, int] | None) -> dict:
    details = {} if maps.train is None else {"train": int(maps.train[row])}
    if window is not None:
        details["window"] = list(window)
    return details
