"""Content hashes that key the feature cache: model weights, dataset contents, settings."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

SAMPLED_ITEMS = 64


def model_hash(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, shapes, dtypes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return digest.hexdigest()


def dataset_hash(dataset: Dataset) -> str:
    """Hash of the whole content for in-memory datasets; else of length plus 64 spread-out items.

    The sampled fingerprint catches a different dataset, order or preprocessing, not an edit
    to one unsampled image; datasets that can afford it should expose `images`/`targets`.
    """
    digest = hashlib.sha256(f"n={len(dataset)}".encode())
    images, targets = getattr(dataset, "images", None), getattr(dataset, "targets", None)
    if isinstance(images, torch.Tensor) and isinstance(targets, torch.Tensor):
        digest.update(images.contiguous().numpy().tobytes())
        digest.update(targets.contiguous().numpy().tobytes())
        digest.update(str(getattr(dataset, "channels", "")).encode())
        return digest.hexdigest()
    n = len(dataset)
    for index in sorted({round(i * (n - 1) / max(1, SAMPLED_ITEMS - 1)) for i in range(min(n, SAMPLED_ITEMS))}):
        image, label = dataset[index]
        digest.update(torch.as_tensor(image).float().contiguous().numpy().tobytes())
        digest.update(str(int(label)).encode())
    return digest.hexdigest()


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
