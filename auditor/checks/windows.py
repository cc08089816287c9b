"""Window statistics of attribution maps: pure functions on `(n, H, W)` non-negative maps.

- `densest_window`: share of each map's mass inside its densest `side × side` window
  (box sums by pooling, i.e. an integral image). A uniform map scores `side² / (H·W)`:
  that is the floor of the share.
- `top_spot`: the window position where a group's maps peak much more often than reference
  maps do (excess recurrence): a spot the model looks at only when it errs.
- `region_mask`: named regions (`border`, corners, a box in fractions) as boolean masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Windows:
    """Per map: mass share inside its densest window (NaN for an empty map) and the window's top-left."""

    share: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor


@dataclass(frozen=True)
class Spot:
    """The spot where a group's maps peak far more often than reference maps do.

    `members` marks maps whose window lies within half a window of (`row`, `col`);
    `recurrence` is their share of the group, `reference_recurrence` the share of reference
    maps peaking there too, and `excess` the difference.
    """

    row: int
    col: int
    members: torch.Tensor
    recurrence: float
    reference_recurrence: float

    @property
    def excess(self) -> float:
        return self.recurrence - self.reference_recurrence


def window_side(fraction: float, size: int) -> int:
    """A window side in pixels from a fraction of the image side (at least one pixel)."""
    return max(1, min(size, round(fraction * size)))


def box_sums(maps: torch.Tensor, side: int) -> torch.Tensor:
    """`(n, H−side+1, W−side+1)` sums of every `side × side` window."""
    return F.avg_pool2d(maps[:, None].double(), side, stride=1)[:, 0] * (side * side)


def mass_share(inside: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """`inside / total mass` per map (float32); NaN for maps without finite positive mass."""
    total = maps.double().sum(dim=(1, 2))
    usable = torch.isfinite(total) & (total > 0)
    return torch.where(usable, inside / total.clamp_min(1e-300), torch.full_like(total, float("nan"))).float()


def densest_window(maps: torch.Tensor, side: int) -> Windows:
    """Each map's densest window; maps with no finite positive mass get share NaN."""
    sums = box_sums(maps, side)
    best, flat = sums.flatten(1).max(dim=1)
    width = sums.shape[2]
    return Windows(mass_share(best, maps), flat // width, flat % width)


def near(windows: Windows, row: int, col: int, side: int) -> torch.Tensor:
    """Maps whose densest window starts within `side // 2` pixels of (`row`, `col`) in both directions."""
    radius = side // 2
    return (~windows.share.isnan()) & ((windows.row - row).abs() <= radius) & ((windows.col - col).abs() <= radius)


def _recurrence(windows: Windows, rows: torch.Tensor, cols: torch.Tensor, side: int) -> torch.Tensor:
    """For each candidate spot, the share of `windows` (NaN-free) peaking within half a window of it."""
    usable = ~windows.share.isnan()
    if not usable.any():
        return torch.zeros(len(rows))
    radius = side // 2
    r, c = windows.row[usable], windows.col[usable]
    close = ((rows[:, None] - r[None]).abs() <= radius) & ((cols[:, None] - c[None]).abs() <= radius)
    return close.float().mean(dim=1)


def top_spot(windows: Windows, reference: Windows, side: int) -> Spot | None:
    """The spot with the largest excess recurrence: the share of the group's maps peaking
    there minus the share of `reference` maps (e.g. correctly classified examples of the same
    class) peaking there. Maps with NaN share are ignored; None when no map remains."""
    usable = ~windows.share.isnan()
    if not usable.any():
        return None
    spots = torch.stack([windows.row[usable], windows.col[usable]], dim=1).unique(dim=0)
    recurrence = _recurrence(windows, spots[:, 0], spots[:, 1], side)
    baseline = _recurrence(reference, spots[:, 0], spots[:, 1], side)
    best = int((recurrence - baseline).argmax())
    row, col = int(spots[best, 0]), int(spots[best, 1])
    return Spot(row, col, near(windows, row, col, side), float(recurrence[best]), float(baseline[best]))


def spot_at(windows: Windows, reference: Windows, row: int, col: int, side: int) -> Spot:
    """The group's recurrence at one given spot, against `reference`."""
    at = (torch.tensor([row]), torch.tensor([col]))
    return Spot(row, col, near(windows, row, col, side), float(_recurrence(windows, *at, side)[0]),
                   float(_recurrence(reference, *at, side)[0]))


def subset(windows: Windows, keep: torch.Tensor) -> Windows:
    """The windows picked by `keep` (a boolean mask or indices)."""
    return Windows(windows.share[keep], windows.row[keep], windows.col[keep])


def region_mask(region: str | tuple[float, float, float, float], height: int, width: int,
                thickness: float = 0.1) -> torch.Tensor:
    """Boolean `(H, W)` mask of a named region or a box `(top, left, bottom, right)` in fractions.

    `border` is a frame `thickness` wide; the corners and `centre` are squares of side 0.25.
    """
    mask = torch.zeros(height, width, dtype=torch.bool)
    if region == "border":
        t, s = window_side(thickness, height), window_side(thickness, width)
        mask[:t], mask[-t:], mask[:, :s], mask[:, -s:] = True, True, True, True
        return mask
    boxes = {"top_left": (0, 0, .25, .25), "top_right": (0, .75, .25, 1), "bottom_left": (.75, 0, 1, .25),
             "bottom_right": (.75, .75, 1, 1), "centre": (.375, .375, .625, .625)}
    top, left, bottom, right = boxes[region] if isinstance(region, str) else region
    r0, r1 = int(round(top * height)), max(int(round(bottom * height)), int(round(top * height)) + 1)
    c0, c1 = int(round(left * width)), max(int(round(right * width)), int(round(left * width)) + 1)
    mask[r0:r1, c0:c1] = True
    return mask


def region_share(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside `mask`; NaN for maps without finite positive mass."""
    return mass_share((maps.double() * mask).sum(dim=(1, 2)), maps)
