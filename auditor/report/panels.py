"""PNG evidence panels for failing examples.

A test-example panel shows the test image, its saliency (VAR) map with the reported window,
and its top proponent training images with their TFA maps (diverging colours: red supports,
blue opposes). A training-image panel shows the image and the test examples it affects.
Images are upscaled with scikit-image (nearest neighbour) and captioned with Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from skimage.transform import resize

from auditor.checks.base import Finding

TILE = 112
CAPTION = 28
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class Tile:
    """One captioned picture in a panel: RGB uint8 `(H, W, 3)` and up to two caption lines."""

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


def upscale(rgb: np.ndarray, size: int = TILE) -> np.ndarray:
    out = resize(rgb, (size, size), order=0, preserve_range=True, anti_aliasing=False)
    return out.astype(np.uint8)


def compose(tiles: list[Tile], title: str) -> Image.Image:
    """Tiles side by side, each captioned, under a title line; windows drawn as rectangles."""
    width = max(1, len(tiles)) * (TILE + 8) + 8
    canvas = Image.new("RGB", (width, TILE + 2 * CAPTION + 16), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill=(0, 0, 0))
    for n, tile in enumerate(tiles):
        x, y = 8 + n * (TILE + 8), 18 + CAPTION
        canvas.paste(Image.fromarray(upscale(tile.rgb)), (x, y))
        for line, text in enumerate(tile.caption[:2]):
            draw.text((x, 18 + line * 12), text[:22], fill=(0, 0, 0))
        if tile.window is not None:
            row, col, side = tile.window
            scale = TILE / tile.rgb.shape[0]
            box = (x + col * scale, y + row * scale, x + (col + side) * scale - 1, y + (row + side) * scale - 1)
            draw.rectangle(box, outline=(0, 220, 255), width=2)
    return canvas


def test_panel(engine, finding: Finding, k: int = 3, source: str = "var") -> Image.Image:
    """Test image, its map (with the finding's window), and its top-`k` proponents with TFA."""
    index = finding.index
    idx = torch.tensor([index])
    p = engine.predictions
    label, predicted = engine.classes[int(p.labels[index])], engine.classes[int(p.predicted[index])]
    image = engine.test_images(idx)[0]
    saliency = engine.saliency(idx, use_var=source == "var").magnitude[0]
    window = tuple(finding.details["window"]) if "window" in finding.details else None
    tiles = [Tile(to_rgb(image), (f"test #{index}", f"{label} -> {predicted}")),
             Tile(blend(to_rgb(image), heat(saliency)), ("VAR map" if source == "var" else "saliency",
                                                         f"value {finding.value:.3g}"), window)]
    k = min(k, engine.attribution.top_k)
    result = engine.tfa(idx, k)[0]
    images, labels = engine.train_batch(result.train_indices)
    for j, (train, score) in enumerate(zip(result.train_indices.tolist(), result.scores.tolist())):
        signed = result.maps.signed[j].sum(0)
        tiles.append(Tile(blend(to_rgb(images[j]), diverging(signed)),
                          (f"train #{train} {engine.classes[int(labels[j])]}", f"Grad-Cos {score:.3f}")))
    return compose(tiles, f"{label} predicted as {predicted}: test image, its map, top proponents with TFA")


def train_panel(engine, finding: Finding, n_examples: int = 4) -> Image.Image:
    """A flagged training image and the test examples it opposes or supports."""
    image, label = engine.train_batch(torch.tensor([finding.index]))
    tiles = [Tile(to_rgb(image[0]), (f"train #{finding.index}", f"label {engine.classes[int(label[0])]}"))]
    examples = list(finding.details.get("examples", []))[:n_examples]
    if examples:
        p = engine.predictions
        for t, picture in zip(examples, engine.test_images(torch.tensor(examples))):
            tiles.append(Tile(to_rgb(picture), (f"test #{t}", f"{engine.classes[int(p.labels[t])]}"
                                                              f" -> {engine.classes[int(p.predicted[t])]}")))
    return compose(tiles, f"training image #{finding.index} (count {finding.value:g}) and test examples it affects")


def write_panels(engine, outcome: Any, folder: Path, limit: int) -> list[Path]:
    """Panels for the first `limit` failing items of a rule; returns the written files."""
    from auditor.report.results import atomic_write

    written = []
    source = getattr(outcome.rule.params, "source", "var")
    for finding in outcome.failures[:limit]:
        if finding.kind == "test":
            panel = test_panel(engine, finding, source="saliency" if source == "saliency" else "var")
        elif finding.kind == "train":
            panel = train_panel(engine, finding)
        else:
            continue
        path = folder / panel_name(outcome.rule.name, finding.kind, finding.index)
        atomic_write(path, png_bytes(panel))
        written.append(path)
    return written


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
