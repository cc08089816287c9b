"""A second dataset for benchmarks nothing was tuned on: scikit-learn's handwritten digits
(1,797 images of 8×8, shipped inside the package: no download), upsampled to 32×32 and
3 channels, split 1,400 train / 397 test with a fixed permutation, and a stock torchvision
ResNet-18 to fit it. A recipe may plant label errors as in `sample_audits.fashion`:

    mislabel: {from: 1, to: 7, count: 20}     # a systematic swap
    relabel: {count: 20}                      # random other labels
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from auditor.data import ImageTensorDataset

CLASSES = tuple(str(d) for d in range(10))
N_TRAIN, SIZE = 1400, 32


def _all() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    return images[order], torch.tensor(digits.target)[order].long()


def defects(recipe: dict[str, Any]) -> dict[str, Any]:
    """Planted indices: `relabelled_train` (the swap) and `random_relabels` (index → new label)."""
    _, labels = _all()
    labels, seed = labels[:N_TRAIN], recipe.get("seed", 0)
    out: dict[str, Any] = {"relabelled_train": [], "random_relabels": {}}
    generator = torch.Generator().manual_seed(seed + 2)
    if swap := recipe.get("mislabel"):
        members = (labels == swap["from"]).nonzero().flatten()
        out["relabelled_train"] = members[torch.randperm(len(members), generator=generator)[:swap["count"]]].tolist()
    if relabel := recipe.get("relabel"):
        taken = set(out["relabelled_train"])
        free = torch.tensor([i for i in range(N_TRAIN) if i not in taken])
        chosen = free[torch.randperm(len(free), generator=generator)[:relabel["count"]]]
        shifts = torch.randint(1, 10, (len(chosen),), generator=generator)
        out["random_relabels"] = {int(j): int((labels[j] + s) % 10) for j, s in zip(chosen, shifts)}
    return out


def train_set(recipe: dict[str, Any] | None = None) -> ImageTensorDataset:
    images, labels = _all()
    targets = labels[:N_TRAIN].clone()
    planted = defects(recipe or {})
    if planted["relabelled_train"]:
        targets[torch.tensor(planted["relabelled_train"])] = recipe["mislabel"]["to"]
    for j, label in planted["random_relabels"].items():
        targets[j] = label
    return ImageTensorDataset(images[:N_TRAIN], targets, CLASSES)


def test_set(recipe: dict[str, Any] | None = None) -> ImageTensorDataset:
    images, labels = _all()
    return ImageTensorDataset(images[N_TRAIN:], labels[N_TRAIN:], CLASSES)


def resnet18(num_classes: int = 10) -> nn.Module:
    """A stock torchvision ResNet-18 (no weights)."""
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=num_classes)
