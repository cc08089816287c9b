"""The sample audits' data: Fashion-MNIST as 3-channel images, with the defects a recipe plants.

A recipe (`recipe.yaml` in an audit folder) may plant:

    square: {class: Shirt, train_share: 0.5, test_share: 0.1, size: 4, colour: [255, 0, 0],
             position: [1, 1]}              # or a watermark: text: AI, alpha: 0.6, jitter: 2
    mislabel: {from: Sneaker, to: Sandal, count: 30}
    relabel: {count: 30}
    copies: {count: 10, shift: 1}

`square` paints a coloured square on `train_share` of one class's training images (a
shortcut: the model can learn "square → class") and on `test_share` of the test images of
every class, where the correlation no longer holds. A clean recipe keeps the same test set
(`train_share: 0`), so clean and shortcut models are audited on identical data. `mislabel`
gives `count` training images of one class the label of another (a systematic swap); `relabel`
gives `count` training images of any class a random other label (random noise). `copies` appends to the
training set near-copies of `count` test images (shifted by `shift` pixels) under a wrong label
(the next class): the classic error a single training image drives. `defects(recipe)` returns
the planted indices (the manifest).
Audit YAML names these functions as dataset factories: `sample_audits.fashion:train_set`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from auditor.data import FASHION_MNIST_CLASSES, ImageTensorDataset, fashion_mnist

SAMPLES = Path(__file__).parent


def recipe_of(audit: str | Path) -> dict[str, Any]:
    """The recipe of a sample audit folder, given by name (`fashion_shortcut`) or path."""
    folder = Path(audit) if Path(audit).is_dir() else SAMPLES / str(audit)
    return yaml.safe_load((folder / "recipe.yaml").read_text()) or {}


def _class(name: str | int) -> int:
    return name if isinstance(name, int) else FASHION_MNIST_CLASSES.index(name)


def _pick(candidates: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return candidates[order[:count]].sort().values


# A 3×5 pixel font for the text watermark: deterministic on every machine (no font files).
GLYPHS = {"A": ("010", "101", "111", "101", "101"), "I": ("111", "010", "010", "010", "111"),
          "C": ("011", "100", "100", "100", "011"), "O": ("010", "101", "101", "101", "010"),
          "P": ("110", "101", "110", "100", "100"), "Y": ("101", "101", "010", "010", "010")}


def text_mask(text: str) -> torch.Tensor:
    """The text as a `(5, 4 * len - 1)` 0/1 mask in the 3×5 font, one blank column between letters."""
    columns = [[[int(c) for c in row] for row in GLYPHS[ch.upper()]] for ch in text]
    rows = [sum(([*glyph[r], 0] for glyph in columns), [])[:-1] for r in range(5)]
    return torch.tensor(rows, dtype=torch.float32)


def jitter(index: int, amount: int, seed: int) -> tuple[int, int]:
    """Image `index`'s offset of the mark, each way in [-amount, amount], fixed by (seed, index)."""
    if amount == 0:
        return 0, 0
    dy, dx = torch.randint(-amount, amount + 1, (2,), generator=torch.Generator().manual_seed(seed * 1_000_003 + index))
    return int(dy), int(dx)


def mark_box(index: int, square: dict[str, Any], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where image `index`'s mark lies, `(top, left, height, width)`, kept inside an image of `shape`."""
    top, left = square.get("position", [1, 1])
    if "text" not in square:
        return top, left, square.get("size", 4), square.get("size", 4)
    h, w = 5, 4 * len(square["text"]) - 1
    dy, dx = jitter(index, square.get("jitter", 0), square.get("jitter_seed", 0))
    return min(max(top + dy, 0), shape[0] - h), min(max(left + dx, 0), shape[1] - w), h, w


def paint(images: torch.Tensor, indices: torch.Tensor, square: dict[str, Any]) -> None:
    """Paint the recipe's mark onto `images[indices]` in place: a solid square (`size`), or with
    `text:` a semi-transparent (`alpha`) text watermark moved by up to `jitter` pixels per image."""
    colour = torch.tensor(square.get("colour", [255, 0, 0]), dtype=torch.uint8).view(1, 3, 1, 1)
    if "text" not in square:
        top, left, size, _ = mark_box(0, square, images.shape[-2:])
        images[indices, :, top:top + size, left:left + size] = colour
        return
    mask = text_mask(square["text"]) * square.get("alpha", 0.6)
    for i in indices.tolist():
        y, x, h, w = mark_box(i, square, images.shape[-2:])
        patch = images[i, :, y:y + h, x:x + w].float()
        images[i, :, y:y + h, x:x + w] = (patch * (1 - mask) + colour[0].float() * mask).round().to(torch.uint8)


def defects(recipe: dict[str, Any]) -> dict[str, list[int]]:
    """Indices of the planted defects: patched training and test images, relabelled training images."""
    seed = recipe.get("seed", 0)
    train_labels = fashion_mnist("train").targets[: recipe.get("n_train", 60000)]
    test_labels = fashion_mnist("test").targets[: recipe.get("n_test", 10000)]
    planted = {"patched_train": [], "patched_test": [], "relabelled_train": [], "random_relabels": {},
               "copied_test": [], "copies_train": []}
    if square := recipe.get("square"):
        members = (train_labels == _class(square["class"])).nonzero().flatten()
        planted["patched_train"] = _pick(members, round(square.get("train_share", 0.5) * len(members)), seed).tolist()
        probes = torch.arange(len(test_labels))
        planted["patched_test"] = _pick(probes, round(square.get("test_share", 0.1) * len(probes)), seed + 1).tolist()
    if mislabel := recipe.get("mislabel"):
        members = (train_labels == _class(mislabel["from"])).nonzero().flatten()
        members = members[~torch.isin(members, torch.tensor(planted["patched_train"], dtype=torch.long))]
        planted["relabelled_train"] = _pick(members, mislabel.get("count", 30), seed + 2).tolist()
    if relabel := recipe.get("relabel"):
        taken = torch.tensor(planted["patched_train"] + planted["relabelled_train"], dtype=torch.long)
        members = torch.arange(len(train_labels))[~torch.isin(torch.arange(len(train_labels)), taken)]
        chosen = _pick(members, relabel.get("count", 30), seed + 4)
        shifts = torch.randint(1, len(FASHION_MNIST_CLASSES), (len(chosen),),
                               generator=torch.Generator().manual_seed(seed + 5))
        planted["random_relabels"] = {int(j): int((train_labels[j] + s) % len(FASHION_MNIST_CLASSES))
                                      for j, s in zip(chosen, shifts)}
    if copies := recipe.get("copies"):
        sources = _pick(torch.arange(len(test_labels)), copies.get("count", 10), seed + 3)
        if planted["patched_test"]:       # copies of unmarked test images: one defect at a time
            sources = _pick(torch.tensor(sorted(set(range(len(test_labels))) - set(planted["patched_test"]))),
                            copies.get("count", 10), seed + 3)
        planted["copied_test"] = sources.tolist()
        planted["copies_train"] = list(range(len(train_labels), len(train_labels) + len(sources)))
    return planted


def wrong_label(label: int) -> int:
    """The label a planted copy gets: the next class."""
    return (label + 1) % len(FASHION_MNIST_CLASSES)


def train_set(audit: str | Path = "fashion_clean", recipe: dict[str, Any] | None = None) -> ImageTensorDataset:
    """The recipe's training images (3-channel uint8 in memory), defects applied."""
    recipe = recipe_of(audit) if recipe is None else recipe
    base = fashion_mnist("train")
    n = recipe.get("n_train", len(base))
    images = base.images[:n].expand(-1, 3, -1, -1).clone()
    targets = base.targets[:n].clone()
    planted = defects(recipe)
    if planted["patched_train"]:
        paint(images, torch.tensor(planted["patched_train"]), recipe["square"])
    if planted["relabelled_train"]:
        targets[torch.tensor(planted["relabelled_train"])] = _class(recipe["mislabel"]["to"])
    for j, label in planted["random_relabels"].items():
        targets[j] = label
    if planted["copied_test"]:
        test = fashion_mnist("test")
        sources = torch.tensor(planted["copied_test"])
        shift = recipe["copies"].get("shift", 1)
        copies = test.images[sources].expand(-1, 3, -1, -1).roll(shifts=(shift, shift), dims=(2, 3))
        labels = torch.tensor([wrong_label(int(y)) for y in test.targets[sources]])
        images, targets = torch.cat([images, copies]), torch.cat([targets, labels])
    return ImageTensorDataset(images, targets, base.classes)


def test_set(audit: str | Path = "fashion_clean", recipe: dict[str, Any] | None = None) -> ImageTensorDataset:
    """The recipe's test images; the shortcut's square appears on `test_share` of them."""
    recipe = recipe_of(audit) if recipe is None else recipe
    base = fashion_mnist("test")
    n = recipe.get("n_test", len(base))
    images = base.images[:n].expand(-1, 3, -1, -1).clone()
    planted = defects(recipe)
    if planted["patched_test"]:
        paint(images, torch.tensor(planted["patched_test"]), recipe["square"])
    return ImageTensorDataset(images, base.targets[:n].clone(), base.classes)
