"""Gradient features: per-example gradients, projected and unit-normalised, and the
streaming pass that fills a `FeatureStore` shard by shard with a progress bar.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from auditor import data as data_module
from auditor.attribution.gradients import GradientComputer
from auditor.attribution.projection import Projector
from auditor.attribution.store import FeatureStore

#: How many examples were featurized in this process (tests assert cache reuse with it).
counters: Counter[str] = Counter()


class Featurizer:
    """`(images, labels)` → unit-norm projected gradients `(b, d)`, in chunks of `chunk_size`."""

    def __init__(self, computer: GradientComputer, projector: Projector, chunk_size: int = 64) -> None:
        self.computer, self.projector, self.chunk_size = computer, projector, chunk_size

    @property
    def dim(self) -> int:
        return self.projector.out_dim

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), self.chunk_size):
            x, y = images[start:start + self.chunk_size], labels[start:start + self.chunk_size]
            grads = self.computer.per_parameter(x, y)
            projected = self.projector.project_blocks([g.flatten(1) for g in grads])
            parts.append(F.normalize(projected.float(), dim=1))
        counters["featurized"] += len(images)
        return torch.cat(parts)


def featurize(store: FeatureStore, dataset: Dataset, featurizer: Featurizer, device: torch.device,
              batch_size: int = 256, shards: list[int] | None = None, progress: bool = True) -> None:
    """Compute and write the store's missing shards (or only `shards`, for one rank's share)."""
    todo = [i for i in store.missing_shards() if shards is None or i in shards]
    total = sum(stop - start for start, stop in map(store.shard_range, todo))
    with tqdm(total=total, desc="featurizing training set", unit="img", disable=not progress or None) as bar:
        for index in todo:
            start, stop = store.shard_range(index)
            rows = []
            for images, labels, _ in data_module.batches(dataset, torch.arange(start, stop), batch_size):
                rows.append(featurizer(images.to(device, non_blocking=True), labels.to(device)).cpu())
                bar.update(len(labels))
            store.write_shard(index, torch.cat(rows))
