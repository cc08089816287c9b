"""PNG evidence panels for failing items, drawn from each finding's `Evidence` only.

A panel shows the image the check measured (for TFA: the training image, after the test
example it was measured for), the map it judged with the window or region it measured
(saliency/VAR as a heatmap; TFA signed: red supports the test prediction, blue opposes), and
the related images (proponents with their Grad-Cos, or the test examples a training image
affects). Nothing is recomputed: the report shows what the check measured.
Images are upscaled with scikit-image (nearest neighbour) and captioned with Pillow.
"""

from __future__ import annotations

import textwrap

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage.transform import resize

from auditor.checks.base import Evidence, Finding
from auditor.checks.windows import region_mask
from auditor.report.results import write_report_file

TILE = 144
LINE = 12                # caption line height (Pillow's default bitmap font)
CAPTION_LINES = 4        # every caption is wrapped to the tile's width, never cut
CHARS = TILE // 6        # characters of the default font that fit one tile
BACKGROUND = (255, 255, 255)
GRID_COLUMNS = 8
GRID_LIMIT = 40          # training images drawn in a rule's grid (all are in results.json)


@dataclass(frozen=True)
class Tile:
    """One captioned picture in a panel: RGB uint8 `(H, W, 3)` and its caption lines (wrapped)."""

    rgb: np.ndarray
    caption: tuple[str, ...]
    window: tuple[int, int, int] | None = None


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """A `(C, H, W)` float image in [0, 1] (1 or 3 channels) as uint8 RGB, min-max scaled if outside."""
    array = image.detach().float().cpu().numpy()
    if array.shape[0] == 1:
        array = np.repeat(array, 3, axis=0)
    array = array[:3].transpose(1, 2, 0)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        array = (array - low) / max(high - low, 1e-12)
    return (array.clip(0, 1) * 255).astype(np.uint8)


def heat(values: torch.Tensor) -> np.ndarray:
    """A non-negative `(H, W)` map as a black-red-yellow-white heatmap (uint8 RGB)."""
    v = values.detach().float().cpu().numpy()
    v = v / max(float(np.nanmax(v)) if np.isfinite(v).any() else 0.0, 1e-12)
    v = np.nan_to_num(v).clip(0, 1)
    return (np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], -1) * 255
            ).astype(np.uint8)


def diverging(values: torch.Tensor) -> np.ndarray:
    """A signed `(H, W)` map as blue (negative) – white – red (positive), symmetric scale."""
    v = values.detach().float().cpu().numpy()
    v = np.nan_to_num(v / max(float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 0.0, 1e-12)).clip(-1, 1)
    red = np.where(v < 0, 1 + v, 1.0)
    blue = np.where(v > 0, 1 - v, 1.0)
    green = 1 - np.abs(v)
    return (np.stack([red, green, blue], -1) * 255).astype(np.uint8)


def blend(base: np.ndarray, overlay: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    return (base * (1 - alpha) + overlay * alpha).astype(np.uint8)


def is_signed(ev: Evidence) -> bool:
    """TFA maps are drawn signed (red for the prediction, blue against); others as heat."""
    return ev.source == "tfa" and ev.signed is not None


def map_overlay(rgb: np.ndarray, ev: Evidence, alpha: float = 0.6) -> np.ndarray:
    """The evidence's map blended over the image it lies on."""
    return blend(rgb, diverging(ev.signed.sum(0)) if is_signed(ev) else heat(ev.magnitude), alpha)


def upscale(rgb: np.ndarray, size: int = TILE) -> np.ndarray:
    out = resize(rgb, (size, size), order=0, preserve_range=True, anti_aliasing=False)
    return out.astype(np.uint8)


def compose(tiles: list[Tile], title: str) -> Image.Image:
    """Tiles side by side, each captioned, under a title line; windows drawn as rectangles."""
    width = max(1, len(tiles)) * (TILE + 8) + 8
    captions = [wrap_caption(tile.caption) for tile in tiles]
    height = LINE * max((len(c) for c in captions), default=1)
    canvas = Image.new("RGB", (width, TILE + height + 28), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill=(0, 0, 0))
    for n, (tile, lines) in enumerate(zip(tiles, captions)):
        x, y = 8 + n * (TILE + 8), 22 + height
        canvas.paste(Image.fromarray(upscale(tile.rgb)), (x, y))
        for line, text in enumerate(lines):
            draw.text((x, 18 + line * LINE), text, fill=(0, 0, 0))
        if tile.window is not None:
            row, col, side = tile.window
            scale = TILE / tile.rgb.shape[0]
            box = (x + col * scale, y + row * scale, x + (col + side) * scale - 1, y + (row + side) * scale - 1)
            draw.rectangle(box, outline=(0, 220, 255), width=2)
    return canvas


def wrap_caption(caption: tuple[str, ...]) -> list[str]:
    """The caption's lines wrapped to the tile width (at most `CAPTION_LINES`; a longer one ends in ...)."""
    lines = [part for text in caption for part in (textwrap.wrap(text, CHARS, break_on_hyphens=False) or [""])]
    if len(lines) > CAPTION_LINES:
        lines = lines[:CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1][:CHARS - 3] + "..."]
    return lines


def evidence_panel(engine: Any, finding: Finding, n_related: int = 4) -> Image.Image:
    """The finding's evidence as one captioned PNG panel (see `evidence_tiles`)."""
    ev = finding.evidence
    kind_name = "training image" if finding.kind == "train" else "test example"
    source = ev.source if ev is not None else finding.kind
    return compose(evidence_tiles(engine, finding, n_related), f"{kind_name} #{finding.index}: {source} evidence")


def evidence_tiles(engine: Any, finding: Finding, n_related: int = 4) -> list[Tile]:
    """The evidence as the check measured it: the image the map lies on (after the test
    example it was measured for, for TFA), the map with its window or region, and the
    related images (proponents with their scores, or the test examples a training image
    affects). Only images are read from the engine; maps come from the evidence."""
    ev = finding.evidence or Evidence("item", (finding.kind, finding.index))
    measured_for = ([i for k, i, _ in ev.related if k == "test"][:1]   # a TFA map belongs to one test example
                    if ev.source == "tfa" and ev.image[0] == "train" else [])
    tiles = [_tile(engine, ("test", t), "measured for") for t in measured_for]
    measured = _tile(engine, ev.image, f"value {finding.value:.3g}")
    tiles.append(measured)
    if ev.magnitude is not None:
        signed = is_signed(ev)
        overlay = map_overlay(measured.rgb, ev)
        if ev.region is not None:
            overlay = outline(overlay, region_mask(ev.region, *ev.magnitude.shape))
        label = ev.source if ev.method is None else f"{ev.source} ({ev.method})"
        note = "red +, blue -" if signed else ("window" if ev.window else str(ev.region or ""))
        tiles.append(Tile(overlay, (f"{label} map", note), ev.window))
    others = [(k, i, s) for k, i, s in ev.related if not (k == "test" and i in measured_for)]
    for kind, index, score in others[:n_related]:
        tiles.append(_tile(engine, (kind, index), f"score {score:.3f}" if kind == "train" else ""))
    return tiles


def _picture(engine: Any, image: tuple[str, int]) -> torch.Tensor:
    kind, index = image
    idx = torch.tensor([index])
    return engine.train_batch(idx)[0][0] if kind == "train" else engine.test_images(idx)[0]


def _tile(engine: Any, image: tuple[str, int], note: str) -> Tile:
    """An image with its number and labels (`label -> predicted` for test images)."""
    kind, index = image
    if kind == "train":
        caption = f"label {engine.classes[int(engine.train_labels[index])]}"
    else:
        p = engine.predictions
        caption = f"{engine.classes[int(p.labels[index])]} -> {engine.classes[int(p.predicted[index])]}"
    return Tile(to_rgb(_picture(engine, image)), (f"{kind} #{index} {note}".strip(), caption))


def outline(rgb: np.ndarray, mask: torch.Tensor, colour: tuple[int, int, int] = (0, 220, 255)) -> np.ndarray:
    """`rgb` with the boundary pixels of a boolean `(H, W)` mask painted in `colour`."""
    m = mask.numpy()
    p = np.pad(m, 1)  # pixels on the image's edge are boundary too
    inner = m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    out = rgb.copy()
    out[m & ~inner] = colour
    return out


def write_panels(engine: Any, outcome: Any, folder: Path, limit: int) -> list[Path]:
    """Panels for the first `limit` failing test examples and training images of a rule; with
    several failing training images, first a grid of them (`GRID_LIMIT`) with their maps."""
    written = []
    train = [f for f in outcome.failures if f.kind == "train"]
    if len(train) > 1:
        title = f"{outcome.rule.name}: {len(train)} training images" + (
            f" (the first {GRID_LIMIT})" if len(train) > GRID_LIMIT else "")
        grid = finding_grid(engine, train[:GRID_LIMIT], title)
        written.append(write_report_file(folder / f"{slug(outcome.rule.name)}-grid.png", png_bytes(grid)))
    for finding in [f for f in outcome.failures if f.kind in ("test", "train")][:limit]:
        path = folder / panel_name(outcome.rule.name, finding.kind, finding.index)
        written.append(write_report_file(path, png_bytes(evidence_panel(engine, finding))))
    return written


def finding_grid(engine: Any, findings: list[Finding], title: str, columns: int = GRID_COLUMNS) -> Image.Image:
    """Failing images in rows of `columns`, each with the map its check measured (if any) and
    the window: the training-side findings of a rule at one glance."""
    tiles = [_grid_tile(engine, f) for f in findings]
    rows = [compose(tiles[i:i + columns], title if i == 0 else "") for i in range(0, len(tiles), columns)]
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), BACKGROUND)
    top = 0
    for row in rows:
        canvas.paste(row, (0, top))
        top += row.height
    return canvas


def _grid_tile(engine: Any, finding: Finding) -> Tile:
    """One failing image with its measured map blended in (signed for TFA) and its window."""
    ev = finding.evidence
    image = ev.image if ev is not None else (finding.kind, finding.index)
    tile = _tile(engine, image, "")
    rgb = tile.rgb
    if ev is not None and ev.magnitude is not None:
        rgb = map_overlay(rgb, ev, 0.45)
    return Tile(rgb, (*tile.caption, f"value {finding.value:.3g}"), ev.window if ev is not None else None)


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def panel_name(rule: str, kind: str, index: int) -> str:
    """The PNG file name of one failing item's panel."""
    return f"{slug(rule)}-{kind}-{index}.png"


def slug(name: str) -> str:
    """A file-name-safe version of a rule name."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:80] or "rule"
