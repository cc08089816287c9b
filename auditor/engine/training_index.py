"""The training index: gradient features of every training image (cached on disk) and each
test example's top-k Grad-Cos proponents and opponents (DESIGN.md §1.1), scored once.

    parameters ─▶ gradient computer ─▶ featurizer ─▶ feature store (shards) ─▶ influence top-k (result cache)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
import time
from functools import cached_property
from pathlib import Path

import torch
import torch.nn.functional as F

from auditor import data as data_module
from auditor.progress import bar as progress_bar, note
from auditor.attribution.feature_store import FeatureStore, default_shard_size, open_cache
from auditor.attribution.features import (Featurizer, default_chunk_size, featurized_shards, missing,
                                          require_finite)
from auditor.attribution.gradients import GradientComputer, make_gradient_computer, select_parameters
from auditor.attribution.influence import Influence, TopK, grad_cos_topk, kernel_factor, kernel_queries
from auditor.attribution.projection import make_projector
from auditor.attribution.result_store import ResultStore
from auditor.engine.keys import CacheKeys, key_of
from auditor.engine.located import located
from auditor.engine.plan import featurize_plan, time_estimate
from auditor.engine.predictions import check_labels
from auditor.engine.probe import probed_shares
from auditor.target import Target

Row = tuple[torch.Tensor, ...]


class TrainingIndex:
    """Training features and influence for one target. `test_labels(indices)` gives the label
    each test example's gradient is taken for (predicted or true, per settings)."""

    def __init__(self, target: Target, test_labels: Callable[[torch.Tensor], torch.Tensor],
                 stats: Counter[str]) -> None:
        self.target, self.test_labels, self.stats = target, test_labels, stats
        self.spec = target.spec
        self.settings = self.spec.settings
        self.attribution = self.settings.attribution

    @cached_property
    def parameter_names(self) -> list[str]:
        """Selected parameters (`layers:` or all trainable)."""
        with located(self.spec, "layers"):
            return select_parameters(self.target.model, self.attribution.layers)

    @cached_property
    def keys(self) -> CacheKeys:
        return CacheKeys(self.target, self.parameter_names, lambda: self.featurizer.projector.layout)

    @cached_property
    def gradients(self) -> GradientComputer:
        with located(self.spec, "gradient_computer"):
            return make_gradient_computer(self.target.model, self.parameter_names, self.attribution.gradient_computer)

    @cached_property
    def featurizer(self) -> Featurizer:
        a = self.attribution
        factored = a.projection == "factored" and self.gradients.dim > a.projection_dim
        shares = self.gradient_shares() if factored else None
        projector = make_projector(self.gradients.dim, a.projection_dim, a.projection, self.settings.seed,
                                   shapes=self.gradients.shapes, shares=shares)
        chunk = a.chunk_size or default_chunk_size(projector.working_size(self.gradients), self.settings.batch_size,
                                                   self.target.example_bytes)
        return Featurizer(self.gradients, projector, chunk, self.stats, a.precision)

    def gradient_shares(self) -> list[float] | None:
        """Each parameter's share of the squared gradient norm (the probe, `auditor.engine.probe`):
        the factored projection gives its dimensions to the layers carrying the Grad-Cos."""
        with located(self.spec, "cache_dir", section="settings"):
            path = open_cache(self.cache_root) / "probes" / f"{key_of(self.keys.probe)}.json"
        return probed_shares(self.target, self.gradients, path)

    @cached_property
    def labels(self) -> torch.Tensor:
        """`(n_train,)` labels of the training set (checked against the class count)."""
        dataset = self.target.train
        targets = getattr(dataset, "targets", None)
        if isinstance(targets, (list, tuple)):
            targets = torch.as_tensor(targets)
        labels = (targets.long() if isinstance(targets, torch.Tensor) and len(targets) == len(dataset)
                  else torch.cat([y for _, y, _ in data_module.batches(dataset, batch_size=self.settings.batch_size)]))
        check_labels(labels, len(self.target.classes), self.target.where.get("train"))
        return labels

    @property
    def cache_root(self) -> Path:
        return self.spec.base_dir / self.settings.cache_dir

    @cached_property
    def feature_store(self) -> FeatureStore:
        """The training features' store for this model, data and settings (shards may be missing)."""
        meta = self.keys.features
        with located(self.spec, "cache_dir", section="settings"):
            n, dim = len(self.target.train), self.featurizer.dim
            return FeatureStore(self.cache_root, key_of(meta), n, dim,
                                self.attribution.shard_size or default_shard_size(n, dim), meta)

    @cached_property
    def store(self) -> FeatureStore:
        """The feature store with every shard computed."""
        store = self.feature_store
        if not store.complete():
            self.featurize(store)
        return store

    def plan(self, n_rows: int) -> str:
        """What featurizing `n_rows` training images will cost (`auditor.engine.plan`)."""
        return featurize_plan(self.target.model, n_rows=n_rows, parameters=self.gradients.dim,
                              layers=self.attribution.layers, chunk=min(self.featurizer.chunk_size, n_rows),
                              held=self.featurizer.projector.working_size(self.gradients),
                              example_bytes=self.target.example_bytes, dim=self.featurizer.dim,
                              projection=self.attribution.projection, cache_root=self.cache_root,
                              on_cpu=self.target.device.type == "cpu")

    def featurize(self, store: FeatureStore, shards: list[int] | None = None) -> None:
        """Compute the store's missing shards (or only `shards`: one rank's share)."""
        for _ in self.featurized(store, shards):
            pass

    def featurized(self, store: FeatureStore, shards: list[int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """The store's missing shards (or `shards`), computed and written one at a time, as they come."""
        todo = missing(store, shards)
        total = sum(stop - start for start, stop in map(store.shard_range, todo))
        if todo:
            note(self.plan(total))
        start, done = time.perf_counter(), 0
        with located(self.spec, "chunk_size"):
            for index, shard in featurized_shards(store, self.target.train, self.featurizer, self.target.device,
                                                  todo, self.settings.batch_size):
                if done == 0 and len(todo) > 1:
                    note(time_estimate(len(shard), time.perf_counter() - start, total))
                done += len(shard)
                yield index, shard

    def test_features(self, indices: torch.Tensor) -> torch.Tensor:
        """Projected unit-norm gradients `(m, d)` of test examples (gradient labels)."""
        return self._features(indices, lambda chunk: (self.target.test_images(chunk), self.test_labels(chunk)), "test")

    def train_features(self, indices: torch.Tensor) -> torch.Tensor:
        """Projected unit-norm gradients `(m, d)` of chosen training examples (their own labels),
        computed directly: the same rows the feature store holds, without reading it."""
        return self._features(indices, self.target.train_batch, "train")

    def _features(self, indices: torch.Tensor, batch, side: str) -> torch.Tensor:
        device, size = self.target.device, max(self.settings.batch_size, 1)
        parts = []
        for start in range(0, len(indices), size):
            images, labels = batch(indices[start:start + size])
            parts.append(self.featurizer(images.to(device), labels.to(device)))
        features = torch.cat(parts) if parts else torch.zeros(0, self.featurizer.dim, device=device)
        with located(self.spec, "layers"):
            return require_finite(features, indices, side)

    def exact_test_gradients(self, indices: torch.Tensor) -> torch.Tensor:
        """Unprojected unit-norm test gradients `(m, P)` (for TFA)."""
        device = self.target.device
        grads = self.gradients.flat(self.target.test_images(indices).to(device), self.test_labels(indices).to(device))
        return F.normalize(grads, dim=1)

    def tfa_directions(self, indices: torch.Tensor) -> torch.Tensor:
        """Unit parameter-space directions `(m, P)` against which TFA differentiates a training
        image's gradient cosine: each test example's exact gradient (Grad-Cos), or with `influence:
        kernel` the kernel score's own direction, its query mapped back through the projection,
        Pᵀ(UᵀU + λI)⁻¹u_z (DESIGN.md §1.4): the map then explains the score that ranked the pair."""
        if self.attribution.influence != "kernel":
            return self.exact_test_gradients(indices)
        queries = kernel_queries(self.test_features(indices), self.kernel)
        return F.normalize(self.featurizer.projector.transpose(queries), dim=1)

    @cached_property
    def results(self) -> ResultStore:
        """Top-k rows of the test examples scored by earlier runs with the same key (on disk)."""
        meta = self.keys.influence
        with located(self.spec, "cache_dir", section="settings"):
            return ResultStore(self.cache_root, "influence", key_of(meta), meta)

    @cached_property
    def _rows(self) -> dict[int, Row]:
        """Per test example: proponent indices and scores, opponent indices and scores."""
        return self.results.load()

    @cached_property
    def kernel(self) -> torch.Tensor:
        """Cholesky factor of UᵀU + λI over the whole feature store (`influence: kernel`), once per run."""
        store = self.feature_store
        chunks = store.chunks(self.attribution.score_chunk, "cpu", fill=lambda todo: self.featurized(store, todo))
        return kernel_factor(chunks, store.dim, self.attribution.damping)

    def influence(self, indices: torch.Tensor) -> Influence:
        """Top-k proponents and opponents of each selected test example (computed once each)."""
        missing = torch.tensor([i for i in indices.tolist() if i not in self._rows], dtype=torch.long)
        if len(missing):
            queries = self.test_features(missing)
            if self.attribution.influence == "kernel":
                queries = kernel_queries(queries, self.kernel)
            store = self.feature_store
            chunks = store.chunks(self.attribution.score_chunk, self.target.device,
                                  fill=lambda todo: self.featurized(store, todo))
            with progress_bar(store.n, f"scoring {len(missing):,} test examples") as bar:
                proponents, opponents = grad_cos_topk(queries, counted(chunks, bar), self.attribution.top_k)
            for row, i in enumerate(missing.tolist()):
                self._rows[i] = (proponents.indices[row], proponents.scores[row],
                                 opponents.indices[row], opponents.scores[row])
            self.stats["scored"] += len(missing)
            self.results.save(self._rows)
        rows = [self._rows[i] for i in indices.tolist()]
        stack = lambda j: torch.stack([r[j] for r in rows]) if rows else torch.zeros(0, 0)  # noqa: E731
        return Influence(indices.clone(), TopK(stack(0), stack(1)), TopK(stack(2), stack(3)))


def counted(chunks: Iterator[tuple[int, torch.Tensor]], bar) -> Iterator[tuple[int, torch.Tensor]]:
    """`chunks` unchanged, advancing `bar` by each chunk's rows."""
    for start, block in chunks:
        bar.update(len(block))
        yield start, block
