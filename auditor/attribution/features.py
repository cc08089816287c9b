"""Gradient features: per-example gradients, projected and unit-normalised, and the
streaming pass that fills a `FeatureStore` shard by shard with a progress bar.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from auditor import data as data_module
from auditor.progress import bar as progress_bar
from auditor.attribution.gradients import GradientComputer
from auditor.attribution.projection import Projector
from auditor.attribution.feature_store import FeatureStore
from auditor.attribution.memory import Chunked, rows_within
from auditor.errors import AttributionError


def default_chunk_size(n_values: int, batch_size: int, activation_bytes: int = 0) -> int:
    """Examples per chunk: the `n_values` each holds (its gradient, and a working copy) and the
    activations its backward keeps (`activation_bytes`, measured at the real input size) fit the budget.

    Small models get whole batches (fewer, larger kernels); large ones a few examples at a time.
    """
    return rows_within(8 * max(1, n_values) + activation_bytes, batch_size)


class Featurizer:
    """`(images, labels)` → unit-norm projected gradients `(b, d)`, in chunks of `chunk_size`.

    A chunk that runs out of memory is retried at half the size (with a warning); the smaller
    size is kept for the rest of the run. `stats["featurized"]` counts the examples done.
    """

    def __init__(self, computer: GradientComputer, projector: Projector, chunk_size: int = 64,
                 stats: Counter[str] | None = None, precision: str = "float32") -> None:
        self.computer, self.projector, self.precision = computer, projector, precision
        self.chunks = Chunked(chunk_size, "the gradient", "settings.attribution.chunk_size",
                              "restrict `layers:` to fewer modules, lower projection_dim, or use a device "
                              "with more memory")
        self.stats = stats if stats is not None else Counter()

    @property
    def chunk_size(self) -> int:
        return self.chunks.size

    @property
    def dim(self) -> int:
        return self.projector.out_dim

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        parts = self.chunks.map(len(images), lambda part: self._features(images[part], labels[part]))
        self.stats["featurized"] += len(images)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _features(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast(x.device, self.precision):
            features = self.projector.features(self.computer, x, y)
        return F.normalize(features.float(), dim=1)


def autocast(device: torch.device, precision: str):
    """`torch.autocast` to `precision` on the device (the model's matmuls and convolutions in
    half precision, losses and reductions in float32); nothing for float32."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, precision))


def require_finite(features: torch.Tensor, indices: torch.Tensor, what: str) -> torch.Tensor:
    """`features (b, d)` unchanged, or an error naming the first example whose gradient is NaN/Inf."""
    bad = ~torch.isfinite(features.sum(dim=1))  # unit rows cannot overflow: NaN/Inf in a row shows in its sum
    if bad.any():
        first = int(indices[int(bad.nonzero()[0, 0])])  # `indices` on the CPU, `features` anywhere
        raise AttributionError(
            f"the loss gradient of {what} example {first} is NaN or Inf ({int(bad.sum())} of {len(bad)} in its batch)",
            field="model", fix="check the model for operations with undefined derivatives (sqrt or log at 0) "
                               "and the checkpoint for NaN weights; or restrict `settings.attribution.layers`")
    return features


def missing(store: FeatureStore, shards: list[int] | None = None) -> list[int]:
    """The store's missing shards (among `shards`, when given), in index order: one scan of the folder."""
    return [i for i in store.missing_shards() if shards is None or i in shards]


def featurized_shards(store: FeatureStore, dataset: Dataset, featurizer: Featurizer, device: torch.device,
                      todo: list[int], batch_size: int = 256) -> Iterator[tuple[int, torch.Tensor]]:
    """Compute the shards `todo` (see `missing`) in order; yield `(index, features)` of each as it
    is handed to the store's background writer, so a caller can score it at once."""
    total = sum(stop - start for start, stop in map(store.shard_range, todo))
    with progress_bar(total, "featurizing training set") as bar:
        try:
            for index in todo:
                start, stop = store.shard_range(index)
                shard = torch.empty(stop - start, featurizer.dim)  # filled in place: no concatenation copy
                for images, labels, chunk in data_module.batches(dataset, torch.arange(start, stop), batch_size):
                    features = featurizer(images.to(device, non_blocking=True), labels.to(device))
                    first = int(chunk[0]) - start
                    shard[first:first + len(chunk)] = require_finite(features, chunk, "training").cpu()
                    bar.update(len(labels))
                store.write_shard(index, shard)  # written in the background while the next shard is computed
                yield index, shard
        finally:
            store.flush()  # every completed shard is on disk when this ends, even after an error
