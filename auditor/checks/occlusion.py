"""Occlusion of a window with the image's own background: the causal test behind the
shortcut checks (DESIGN.md §7). A spot the model relies on changes its output when it is
filled with the colour around the object; a spot attribution merely happens to peak at does not."""

from __future__ import annotations

import torch

from auditor.attribution.memory import ACTIVATION_BUDGET_BYTES, rows_within
from auditor.checks.base import AuditEngine
from auditor.sampling import seeded_draw


def frame_median(images: torch.Tensor) -> torch.Tensor:
    """`(b, C)` median colour of each image's one-pixel frame: its own background."""
    frame = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2)
    return frame.median(dim=2).values


def fill(images: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """`images (b, C, H, W)` with the `(top, left, bottom, right)` box filled by each image's frame median."""
    top, left, bottom, right = box
    out = images.clone()
    out[:, :, top:bottom, left:right] = frame_median(images)[:, :, None, None]
    return out


def occlude(images: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """`images (b, C, H, W)` with the `(row, col, side)` window filled by each image's frame median."""
    row, col, side = window
    return fill(images, (row, col, row + side, col + side))


def grown(window: tuple[int, int, int], height: int, width: int) -> tuple[int, int, int, int]:
    """`(top, left, bottom, right)` of the window grown by half its side on every side (clipped):
    the area where a hotspot's member maps peak (members lie within half a window of it)."""
    row, col, side = window
    pad = side // 2
    return max(0, row - pad), max(0, col - pad), min(height, row + side + pad), min(width, col + side + pad)


def flips(engine: AuditEngine, tests: torch.Tensor, window: tuple[int, int, int], predicted: int,
          batch: int = 1024) -> torch.Tensor:
    """Per test example predicted as `predicted`: does its prediction change when the hotspot's
    area (the window grown by half a side) is filled with the image's frame median?"""
    changed = []
    if len(tests):       # the images and their occluded copy, within the activation budget
        batch = rows_within(2 * engine.test_images(tests[:1]).nbytes, batch, ACTIVATION_BUDGET_BYTES)
    for start in range(0, len(tests), batch):
        images = engine.test_images(tests[start:start + batch])
        occluded = fill(images, grown(window, *images.shape[2:]))
        changed.append(engine.logits(occluded).argmax(1) != predicted)
    return torch.cat(changed) if changed else torch.zeros(0, dtype=torch.bool)


def flip_share(engine: AuditEngine, tests: torch.Tensor, window: tuple[int, int, int], predicted: int) -> float:
    """Share of `tests` (predicted as `predicted`) whose prediction the filled hotspot changes."""
    return float(flips(engine, tests, window, predicted).float().mean()) if len(tests) else 0.0


TRANSFER_TARGETS = 200
LOCATING_IMAGES = 32       # members whose occlusion places a flagged hotspot's window
LOCATING_STEPS = 2         # candidate offsets each way: a 5 × 5 grid within half a side of the peak


def located_window(engine: AuditEngine, members: torch.Tensor, window: tuple[int, int, int], predicted: int,
                   seed: int = 0) -> tuple[int, int, int]:
    """Among windows of the same side starting within half a side of `window` (a 5 × 5 grid),
    the one whose filling lowers the `predicted` class's probability most, averaged over a
    seeded sample of `members`: where the mark is. The densest window of the maps leans on a
    mark's edges (one pixel off on the sample's square); occlusion finds the mark itself.
    Ties go to the candidate nearest `window`."""
    row, col, side = window
    if len(members) == 0:
        return window
    images = engine.test_images(members[seeded_draw(len(members), LOCATING_IMAGES, seed)])
    height, width = images.shape[2:]
    step = max(1, side // (2 * LOCATING_STEPS))
    offsets = [k * step for k in range(-LOCATING_STEPS, LOCATING_STEPS + 1)]
    candidates = sorted({(min(max(row + dr, 0), height - side), min(max(col + dc, 0), width - side))
                         for dr in offsets for dc in offsets}, key=lambda rc: (abs(rc[0] - row) + abs(rc[1] - col), rc))
    base = engine.logits(images).softmax(1)[:, predicted]
    drops = [float((base - engine.logits(occlude(images, (r, c, side))).softmax(1)[:, predicted]).mean())
             for r, c in candidates]
    best = max(range(len(candidates)), key=lambda k: (drops[k], -k))     # the nearest of equals
    return (*candidates[best], side)


def transfer_share(engine: AuditEngine, members: torch.Tensor, window: tuple[int, int, int], predicted: int,
                   seed: int = 0) -> float:
    """Share of correctly classified test images of other classes that the hotspot's area, cut
    from the group's images and pasted at the same place, turns into `predicted`: a mark the
    model reads as the class transfers to any image; a part of the class's own objects (a
    collar) rarely makes a bag a coat."""
    p = engine.predictions
    targets = (p.correct & (p.predicted != predicted)).nonzero().flatten()
    if len(targets) == 0 or len(members) == 0:
        return 0.0
    targets = targets[seeded_draw(len(targets), TRANSFER_TARGETS, seed)]
    images = engine.test_images(targets)
    sources = engine.test_images(members[torch.arange(len(targets)) % len(members)])
    top, left, bottom, right = grown(window, *images.shape[2:])
    images[:, :, top:bottom, left:right] = sources[:, :, top:bottom, left:right]
    return float((engine.logits(images).argmax(1) == predicted).float().mean())
