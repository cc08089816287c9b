"""Datasets the auditor reads: Fashion-MNIST from disk, `ImageFolder`, user factories.

Every dataset yields `(image, label)` with `image` a float tensor `(C, H, W)`. In-memory
datasets also offer `batch(indices)` so the engine can skip per-item Python overhead.
"""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from auditor.errors import TargetError
from auditor.files import atomic_write

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class ImageTensorDataset(Dataset):
    """Images held in memory as uint8 `(N, H, W)` or `(N, C, H, W)`; served as floats in [0, 1]."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: tuple[str, ...],
                 channels: int | None = None) -> None:
        if images.dim() == 3:
            images = images.unsqueeze(1)
        self.images = images
        self.targets = targets.long()
        self.classes = tuple(classes)
        self.channels = channels or images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.batch(torch.tensor([index]))
        return image[0], int(label[0])

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `(b, C, H, W)` float32 and labels `(b,)` for `indices`."""
        images = self.images[indices].float().div_(255.0)
        if images.shape[1] != self.channels:
            images = images.expand(-1, self.channels, -1, -1).contiguous()
        return images, self.targets[indices]


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """A folder laid out as torchvision's `FashionMNIST(root)` expects, prepared if needed.

    `root=None` uses Debian's `dataset-fashion-mnist` files (gzipped IDX) unpacked into
    `$AUDITOR_DATA` (default `~/.cache/auditor`). A `root` that already has the torchvision
    layout is used as it is; one holding the gzipped files directly is unpacked beside them.
    """
    source = Path(root) if root is not None else DEBIAN_FASHION_MNIST
    if (source / "FashionMNIST" / "raw" / FASHION_MNIST_FILES[0]).is_file():
        return source
    if not all((source / f"{name}.gz").is_file() or (source / name).is_file() for name in FASHION_MNIST_FILES):
        raise FileNotFoundError(
            f"Fashion-MNIST files not found in {source}: install Debian's package "
            "(`apt-get install dataset-fashion-mnist`) or pass `root:` pointing at the IDX files")
    cache = Path(os.environ.get("AUDITOR_DATA", Path.home() / ".cache" / "auditor"))
    target = (cache if root is None else source) / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        out = target / name
        if out.is_file():
            continue
        packed = source / f"{name}.gz"
        with gzip.open(packed) if packed.is_file() else open(source / name, "rb") as src:
            atomic_write(out, lambda dst: shutil.copyfileobj(src, dst))    # processes may unpack at once (xdist)
    return target.parent.parent


def fashion_mnist(split: str = "train", root: str | Path | None = None, channels: int = 1) -> ImageTensorDataset:
    """Fashion-MNIST `split` ('train' 60k / 'test' 10k) as an in-memory dataset."""
    from torchvision.datasets import FashionMNIST

    raw = FashionMNIST(str(fashion_mnist_root(root)), train=(split == "train"), download=False)
    return ImageTensorDataset(raw.data, raw.targets, FASHION_MNIST_CLASSES, channels=channels)


def limited(dataset: Dataset, limit: int | None) -> Dataset:
    """The first `limit` examples of `dataset` (all when `limit` is None or larger)."""
    if limit is None or limit >= len(dataset):
        return dataset
    if isinstance(dataset, ImageTensorDataset):
        return ImageTensorDataset(dataset.images[:limit], dataset.targets[:limit], dataset.classes,
                                  dataset.channels)
    subset = Subset(dataset, range(limit))
    if hasattr(dataset, "classes"):
        subset.classes = dataset.classes
    return subset


UNREADABLE = (OSError, SyntaxError)     # what PIL raises for a truncated image, and for a broken PNG


def readable_only(dataset: Dataset) -> tuple[Dataset, list[str]]:
    """`dataset` without the examples that cannot be read (truncated, corrupt, not an image), and
    their files (or `example N`): one pass over every example (`data.skip_unreadable: true`)."""
    if hasattr(dataset, "batch"):           # in-memory tensors: nothing to decode
        return dataset, []
    keep, skipped = [], []
    for index in range(len(dataset)):
        try:
            dataset[index]
            keep.append(index)
        except UNREADABLE:
            skipped.append(image_path(dataset, index) or f"example {index}")
    if not skipped:
        return dataset, []
    subset = Subset(dataset, keep)
    if hasattr(dataset, "classes"):
        subset.classes = dataset.classes
    return subset, skipped


def image_path(dataset: Dataset, index: int) -> str | None:
    """The file behind example `index`, when the dataset knows it: `paths[index]` (the way a
    factory dataset gives its files), torchvision's `samples[index][0]` (ImageFolder), through
    `Subset`s; None for in-memory data."""
    while isinstance(dataset, Subset):
        dataset, index = dataset.dataset, int(dataset.indices[index])
    paths = getattr(dataset, "paths", None)
    if paths is not None:
        return str(paths[index])
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, (list, tuple)) and samples and isinstance(samples[0], (list, tuple)):
        return str(samples[index][0])
    return None


def batches(dataset: Dataset, indices: torch.Tensor | None = None, batch_size: int = 256,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield `(images, labels, indices)` in order over `indices` (default: all)."""
    if indices is None:
        indices = torch.arange(len(dataset))
    if hasattr(dataset, "batch"):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images, labels = dataset.batch(chunk)
            yield images, torch.as_tensor(labels).long(), chunk
        return
    loader = DataLoader(Readable(dataset, indices.tolist()), batch_size=batch_size, shuffle=False,
                        collate_fn=_collate)
    start = 0
    for images, labels in loader:
        chunk = indices[start:start + len(labels)]
        start += len(labels)
        yield images, labels, chunk


class Readable(Dataset):
    """`dataset[indices[i]]`, where an image that cannot be read (truncated, corrupt, not an
    image) is one error naming its file, not a decoder's traceback."""

    def __init__(self, dataset: Dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        index = self.indices[i]
        try:
            return self.dataset[index]
        except UNREADABLE as exc:
            path = image_path(self.dataset, index)
            raise TargetError(f"cannot read {'this image' if path else f'example {index}'}: {exc}",
                              path=path, fix="replace or delete the file (it is truncated or not an image), or set "
                                            "`data.skip_unreadable: true` to leave such files out, listed"
                              if path else "check the dataset's __getitem__") from None


def gather(dataset: Dataset, indices: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Images `(m, C, H, W)` and labels `(m,)` of `indices`, in that order."""
    parts = list(batches(dataset, indices, batch_size))
    if not parts:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _collate(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([item[0] for item in items])
    labels = torch.as_tensor([int(item[1]) for item in items], dtype=torch.long)
    return images, labels
