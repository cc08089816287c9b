"""`region_mass`: share of attribution mass inside a declared region (the border, a corner,
the centre or a box): watermark and border shortcuts."""

from __future__ import annotations

import torch

from auditor.checks.base import AuditEngine, Check, CheckResult, register, worst_first, worst_measured
from auditor.checks.maps import measured_maps, over_threshold
from auditor.checks.windows import region_mask, region_share
from auditor.spec.checks import RegionParams


@register
class RegionMass(Check):
    """Attribution share inside a fixed region: watermark and border shortcuts."""

    Params = RegionParams

    def run(self, engine: AuditEngine, indices: torch.Tensor) -> CheckResult:
        p = self.params
        indices, maps = measured_maps(engine, indices, p)
        height, width = maps.magnitude.shape[1:]
        mask = region_mask(p.area, height, width, p.thickness)
        shares = region_share(maps.magnitude, mask)
        failures = over_threshold(engine, maps, shares, p.max_mass, region=p.area)
        finite = shares[~shares.isnan()]
        area = float(mask.float().mean())
        return CheckResult(f"max mass in {'box' if p.box is not None else p.area}",
                           worst_measured(shares), p.max_mass, "<=", len(indices),
                           worst_first(failures.values()),
                           extra={"region_area": area, "median_share": float(finite.median()) if len(finite) else None,
                                  "empty_maps": int(shares.isnan().sum())})
