"""The training set in the model's own representations (a mid-depth feature map, pooled, and the
head's input), each computed in one forward pass and kept in the cache folder, and each image's
nearest neighbours in them (`auditor.attribution.neighbours`): the label evidence of `mislabel_suspects`.

    CACHE_DIR/representations/KEY.pt    (n_train, D) float32, keyed by the weights, the data, the layer
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Callable

import torch

from auditor.attribution.feature_store import open_cache
from auditor.attribution.neighbours import Neighbours, RecordRepresentation, nearest_neighbours, representation_layers
from auditor.engine.keys import CacheKeys, key_of
from auditor.engine.located import located
from auditor.errors import AttributionError
from auditor.files import atomic_write
from auditor.progress import bar as progress_bar
from auditor.target import Target


class Representations:
    """Every training image's representation (cached on disk) and its label-voting neighbours."""

    def __init__(self, target: Target, keys: Callable[[], CacheKeys], labels: Callable[[], torch.Tensor],
                 stats: Counter[str]) -> None:
        self.target, self.keys, self.labels, self.stats = target, keys, labels, stats
        self.settings = target.spec.settings
        self._found: dict[tuple[int, str | None], Neighbours] = {}

    def train(self, found: tuple[str, bool]) -> torch.Tensor:
        """`(n_train, D)` representation of every training image at one of `layers()`: the output
        of module `name`, or its input when `use_input`."""
        name, use_input = found
        with located(self.target.spec, "cache_dir", section="settings"):
            root = open_cache(self.target.spec.base_dir / self.settings.cache_dir)
        path = root / "representations" / f"{key_of(self.keys().representation(name + (':input' if use_input else '')))}.pt"
        if path.is_file():
            with contextlib.suppress(Exception):          # a damaged file is recomputed, never trusted
                cached = torch.load(path, weights_only=True)
                if isinstance(cached, torch.Tensor) and len(cached) == len(self.target.train):
                    return cached
        features = self._compute(dict(self.target.model.named_modules())[name], use_input)
        buffer = io.BytesIO()
        torch.save(features, buffer)
        with contextlib.suppress(OSError):                # only a cache
            atomic_write(path, buffer.getvalue())
        return features

    def neighbours(self, k: int, layer: str | None = None) -> Neighbours:
        """Each training image's `k` nearest others in each representation, their label votes
        averaged over the representations (once per run)."""
        if (k, layer) not in self._found:
            parts = [nearest_neighbours(self.train(found).to(self.target.device), self.labels(), k,
                                        len(self.target.classes)) for found in self.layers(layer)]
            self._found[k, layer] = Neighbours.averaged(parts)
        return self._found[k, layer]

    def layers(self, layer: str | None = None) -> list[tuple[str, bool]]:
        """The modules whose output (or input, for a head) are the representations: `layer` alone
        when named, else the mid-depth feature map and the head's input."""
        images, _ = self.target.train_batch(torch.arange(min(2, len(self.target.train))))
        found = representation_layers(self.target.model, images.to(self.target.device), layer)
        if not found:
            what = f"no module named '{layer}'" if layer else "neither feature maps nor an nn.Linear head"
            raise AttributionError(f"the model has {what} to read a representation from",
                                   field="rules.layer",
                                   fix="name the module whose output is the representation in the rule's `layer:` "
                                       "(see model.named_modules())")
        return found

    def _compute(self, module: torch.nn.Module, use_input: bool) -> torch.Tensor:
        model, device = self.target.model, self.target.device
        n, size = len(self.target.train), self.target.rows(self.settings.batch_size)
        parts = []
        with (RecordRepresentation(module, use_input) as record, torch.no_grad(),
              progress_bar(n, "representing training images") as bar):
            for start in range(0, n, size):
                images, _ = self.target.train_batch(torch.arange(start, min(n, start + size)))
                model(images.to(device))
                parts.append(record.take())
                bar.update(len(images))
        self.stats["represented"] += n
        return torch.cat(parts) if parts else torch.zeros(0, 0)
