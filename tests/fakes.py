"""Tiny synthetic models and datasets for error-path tests (importable from audit YAML)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from auditor.data import ImageTensorDataset


def linear(num_classes: int = 3, channels: int = 1, size: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, num_classes))


def raising() -> nn.Module:
    raise RuntimeError("weights server unreachable")


def not_a_module() -> object:
    return {"weights": 1}


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def nan_model() -> nn.Module:
    return NaNModel()


def images(n: int = 12, num_classes: int = 3, channels: int = 1, size: int = 8, label_offset: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 255, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes + label_offset
    return ImageTensorDataset(data, labels, tuple(f"c{i}" for i in range(num_classes)))


def empty() -> Dataset:
    return ImageTensorDataset(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0), ("a", "b", "c"))


class _Items(Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.item


def int_images() -> Dataset:
    return _Items((torch.zeros(1, 8, 8, dtype=torch.uint8), 0))


def flat_images() -> Dataset:
    return _Items((torch.zeros(64), 0))
