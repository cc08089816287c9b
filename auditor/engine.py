"""The engine computes each quantity an audit needs once per run, lazily, for every rule.

    predictions (test set) ─▶ selections
    gradient features (train, cached) ─▶ influence top-k ─▶ TFA maps      (attribution/)
    saliency maps (+VAR) of test images                                    (attribution/)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from auditor import data as data_module
from auditor import selection as selection_module
from auditor.attribution.features import Featurizer, counters, default_chunk_size, featurized_shards, require_finite
from auditor.attribution.gradients import GradientComputer, make_gradient_computer, select_parameters
from auditor.attribution.influence import Influence, TopK, grad_cos_topk
from auditor.attribution.projection import make_projector
from auditor.attribution.result_store import ResultStore
from auditor.attribution.saliency import SaliencyMethod, make_method
from auditor.attribution.store import FeatureStore
from auditor.attribution.tfa import TfaMaps, pair_seed, tfa
from auditor.attribution.var import class_set, var
from auditor.errors import AuditError, TargetError
from auditor.fingerprint import dataset_hash, model_hash, settings_hash
from auditor.selection import Selection
from auditor.target import Target, dataset_where


@dataclass(frozen=True)
class Predictions:
    """The model's outputs on a dataset: `logits (n, C)`, `labels (n,)`, `predicted (n,)`."""

    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.labels


@dataclass(frozen=True)
class TfaResult:
    """TFA of one test example on its top-k proponents: `train_indices (k,)`, `scores (k,)`, maps."""

    test_index: int
    train_indices: torch.Tensor
    scores: torch.Tensor
    maps: TfaMaps


class _TrainingAttribution:
    """Training-side attributions (DESIGN.md §1.1–1.2): features, influence, TFA. Mixed into Engine."""

    @cached_property
    def parameter_names(self) -> list[str]:
        """Selected parameters (`layers:` or all trainable)."""
        with self._located("layers"):
            return select_parameters(self.target.model, self.attribution.layers)

    @cached_property
    def gradients(self) -> GradientComputer:
        with self._located("gradient_computer"):
            return make_gradient_computer(self.target.model, self.parameter_names, self.attribution.gradient_computer)

    @cached_property
    def featurizer(self) -> Featurizer:
        a = self.attribution
        projector = make_projector(self.gradients.dim, a.projection_dim, a.projection, self.settings.seed)
        chunk = a.chunk_size or default_chunk_size(self.gradients.dim, self.settings.batch_size)
        return Featurizer(self.gradients, projector, chunk)

    @cached_property
    def train_labels(self) -> torch.Tensor:
        """`(n_train,)` labels of the training set (checked against the class count)."""
        dataset = self.target.train
        targets = getattr(dataset, "targets", None)
        if isinstance(targets, (list, tuple)):
            targets = torch.as_tensor(targets)
        labels = (targets.long() if isinstance(targets, torch.Tensor) and len(targets) == len(dataset)
                  else torch.cat([y for _, y, _ in data_module.batches(dataset, batch_size=self.settings.batch_size)]))
        self._check_labels(labels, dataset)
        return labels

    @cached_property
    def train_store(self) -> FeatureStore:
        """Unit-norm projected gradients of every training example (true labels), cached on disk."""
        store = self.feature_store
        if not store.complete():
            self.featurize_training(store)
        return store

    @cached_property
    def feature_store(self) -> FeatureStore:
        """The training features' store for this model, data and settings (shards may be missing)."""
        meta = self.train_features_meta
        with self._located("cache_dir", section="settings"):
            return FeatureStore(self.cache_root, settings_hash(meta)[:24], len(self.target.train),
                                self.featurizer.dim, self.attribution.shard_size, meta)

    @cached_property
    def train_features_meta(self) -> dict[str, str]:
        """What the training features depend on: hashes of the weights, the data and the settings."""
        a = self.attribution
        return {
            "model": model_hash(self.target.model),
            "data": dataset_hash(self.target.train),
            "settings": settings_hash({"params": self.parameter_names, "projection_dim": a.projection_dim,
                                       "projection": a.projection, "seed": self.settings.seed, "label": "true"}),
        }

    @cached_property
    def test_data_hash(self) -> str:
        return dataset_hash(self.target.test)

    @property
    def cache_root(self) -> Path:
        return self.target.spec.base_dir / self.settings.cache_dir

    @cached_property
    def influence_results(self) -> ResultStore:
        """Top-k rows of the test examples scored by earlier runs with the same key (on disk)."""
        a = self.attribution
        meta = {"features": self.train_features_meta, "test": self.test_data_hash,
                "test_label": a.test_label, "top_k": a.top_k}
        with self._located("cache_dir", section="settings"):
            return ResultStore(self.cache_root, "influence", settings_hash(meta)[:24], meta)

    @cached_property
    def _influence(self) -> dict[int, tuple[torch.Tensor, ...]]:
        """Per test example: proponent indices and scores, opponent indices and scores."""
        return self.influence_results.load()

    def featurize_training(self, store: FeatureStore, shards: list[int] | None = None, progress: bool = True) -> None:
        """Compute the store's missing shards (or only `shards`: one rank's share)."""
        for _ in self._featurized(store, shards, progress):
            pass

    def _featurized(self, store: FeatureStore, shards: list[int] | None = None,
                    progress: bool = True) -> Iterator[tuple[int, torch.Tensor]]:
        """The store's missing shards (or `shards`), computed and written one at a time, as they come."""
        with self._located("chunk_size"):
            yield from featurized_shards(store, self.target.train, self.featurizer, self.device,
                                         self.settings.batch_size, shards=shards, progress=progress)

    def gradient_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels used for test gradients: predicted (default) or true."""
        p = self.predictions
        return (p.predicted if self.attribution.test_label == "predicted" else p.labels)[indices]

    def test_images(self, indices: torch.Tensor) -> torch.Tensor:
        return data_module.gather(self.target.test, indices)[0]

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return data_module.gather(self.target.train, indices)

    def test_features(self, indices: torch.Tensor) -> torch.Tensor:
        """Projected unit-norm gradients `(m, d)` of test examples (gradient labels)."""
        images = self.test_images(indices).to(self.device)
        features = self.featurizer(images, self.gradient_labels(indices).to(self.device))
        with self._located("layers"):
            return require_finite(features, indices, "test")

    def influence(self, indices: torch.Tensor) -> Influence:
        """Top-k proponents and opponents of each selected test example (computed once each)."""
        missing = torch.tensor([i for i in indices.tolist() if i not in self._influence], dtype=torch.long)
        if len(missing):
            queries = self.test_features(missing)
            store = self.feature_store
            chunks = store.chunks(self.attribution.score_chunk, self.device, fill=lambda todo: self._featurized(store, todo))
            proponents, opponents, _ = grad_cos_topk(queries, chunks, self.attribution.top_k)
            for row, i in enumerate(missing.tolist()):
                self._influence[i] = (proponents.indices[row], proponents.scores[row],
                                      opponents.indices[row], opponents.scores[row])
            counters["scored"] += len(missing)
            self.influence_results.save(self._influence)
        rows = [self._influence[i] for i in indices.tolist()]
        stack = lambda j: torch.stack([r[j] for r in rows]) if rows else torch.zeros(0, 0)  # noqa: E731
        return Influence(indices.clone(), TopK(stack(0), stack(1)), TopK(stack(2), stack(3)))

    def exact_test_gradients(self, indices: torch.Tensor) -> torch.Tensor:
        """Unprojected unit-norm test gradients `(m, P)` for TFA."""
        images = self.test_images(indices).to(self.device)
        grads = self.gradients.flat(images, self.gradient_labels(indices).to(self.device))
        return torch.nn.functional.normalize(grads, dim=1)

    def tfa(self, indices: torch.Tensor, k: int | None = None) -> list[TfaResult]:
        """TFA maps of each test example on its top-`k` proponents (SmoothGrad per settings)."""
        a = self.attribution
        k = a.top_k if k is None else k
        if k > a.top_k:
            raise ValueError(f"tfa k={k} exceeds settings.attribution.top_k={a.top_k}")
        influence = self.influence(indices)
        pairs = [(int(t), int(j)) for row, t in enumerate(indices.tolist())
                 for j in influence.proponents.indices[row, :k].tolist()]
        todo = [pair for pair in pairs if pair not in self._tfa]
        if todo:
            tests = torch.tensor(sorted({t for t, _ in todo}))
            grads = self.exact_test_gradients(tests)
            position = {t: r for r, t in enumerate(tests.tolist())}
            images, labels = self.train_batch(torch.tensor([j for _, j in todo]))
            maps = tfa(self.target.model, self.parameter_names, images.to(self.device), labels.to(self.device),
                       grads[[position[t] for t, _ in todo]], a.smoothgrad_samples, a.smoothgrad_sigma,
                       pair_seeds=[pair_seed(self.settings.seed, t, j) for t, j in todo])
            for n, pair in enumerate(todo):
                self._tfa[pair] = (maps.signed[n].cpu(),)
            counters["tfa_pairs"] += len(todo)
            self.tfa_results.save(self._tfa)
        results = []
        for row, t in enumerate(indices.tolist()):
            train = influence.proponents.indices[row, :k]
            signed = torch.stack([self._tfa[(t, int(j))][0] for j in train.tolist()])
            results.append(TfaResult(t, train, influence.proponents.scores[row, :k],
                                     TfaMaps(signed, signed.abs().sum(1))))
        return results

    @cached_property
    def tfa_results(self) -> ResultStore:
        """Signed TFA maps of the (test, train) pairs computed by earlier runs with the same key (on disk)."""
        a = self.attribution
        meta = {"model": self.train_features_meta["model"], "data": self.train_features_meta["data"],
                "test": self.test_data_hash, "params": self.parameter_names, "test_label": a.test_label,
                "samples": a.smoothgrad_samples, "sigma": a.smoothgrad_sigma, "seed": self.settings.seed}
        with self._located("cache_dir", section="settings"):
            return ResultStore(self.cache_root, "tfa", settings_hash(meta)[:24], meta)

    @cached_property
    def _tfa(self) -> dict[tuple[int, int], tuple[torch.Tensor]]:
        """Per (test, train) pair: its signed TFA map `(C, H, W)`."""
        return self.tfa_results.load()


@dataclass(frozen=True)
class SaliencyMaps:
    """Test-image maps for `test_indices (m,)`: `signed (m, C', H, W)`, `magnitude (m, H, W)`."""

    test_indices: torch.Tensor
    signed: torch.Tensor
    magnitude: torch.Tensor


class _TestAttribution:
    """Test-side attributions (DESIGN.md §1.3): base saliency maps and VAR. Mixed into Engine."""

    def saliency_method(self, name: str | None = None) -> SaliencyMethod:
        a = self.attribution
        name = name or a.saliency
        options = {"integrated_gradients": {"steps": a.ig_steps}, "grad_cam": {"layer": a.grad_cam_layer}}
        with self._located("saliency"):
            return make_method(name, self.target.model, **options.get(name, {}))

    def saliency(self, indices: torch.Tensor, method: str | None = None, use_var: bool = False) -> SaliencyMaps:
        """Maps of the predicted class for each selected test image, VAR-refined if `use_var`.

        VAR's class set: the predicted class plus the `var_top_k` most probable others.
        """
        a = self.attribution
        method = method or a.saliency
        cache = self._saliency.setdefault((method, use_var), {})
        missing = torch.tensor([i for i in indices.tolist() if i not in cache], dtype=torch.long)
        if len(missing):
            attributor = self.saliency_method(method)
            p = self.predictions
            for start in range(0, len(missing), self.settings.batch_size):
                chunk = missing[start:start + self.settings.batch_size]
                images = self.test_images(chunk).to(self.device)
                predicted = p.predicted[chunk]
                classes = class_set(p.logits[chunk], predicted, a.var_top_k) if use_var else predicted[:, None]
                maps = attributor.attribute(images, classes.to(self.device)).detach()
                maps = var(maps, 0, a.var_temperature, a.var_tau) if use_var else maps[:, 0]
                for i, m in zip(chunk.tolist(), maps.cpu()):
                    cache[i] = m
        signed = torch.stack([cache[i] for i in indices.tolist()]) if len(indices) else torch.zeros(0)
        return SaliencyMaps(indices.clone(), signed, signed.abs().sum(1) if len(indices) else signed)


class Engine(_TrainingAttribution, _TestAttribution):
    """Holds the target and caches every computed quantity for the rules of one audit."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.settings = target.spec.settings
        self.classes = target.classes
        self.device = target.device
        self.attribution = self.settings.attribution
        self._saliency: dict[tuple[str, bool], dict[int, torch.Tensor]] = {}

    @cached_property
    def predictions(self) -> Predictions:
        """Model outputs on the whole test set (checked for NaN/Inf and label range)."""
        return self._predict(self.target.test)

    def select(self, selection: Selection) -> torch.Tensor:
        """Sorted test indices picked by a rule's `on:`."""
        p = self.predictions
        return selection_module.resolve(selection, p.labels, p.predicted, self.classes, self.settings.seed)

    def _predict(self, dataset: torch.utils.data.Dataset) -> Predictions:
        logits, labels = [], []
        model, device = self.target.model, self.device
        with torch.no_grad():
            for images, targets, indices in data_module.batches(dataset, batch_size=self.settings.batch_size):
                out = model(images.to(device, non_blocking=True)).float().cpu()
                bad = ~torch.isfinite(out).all(dim=1)
                if bad.any():
                    first = int(indices[bad.nonzero()[0, 0]])
                    raise TargetError(
                        f"the model's output contains NaN or Inf (first at example {first})",
                        path=self.target.spec.path, line=self.target.spec.model.where.line, field="model",
                        fix="check the checkpoint for NaN weights and the inputs' normalisation")
                logits.append(out)
                labels.append(targets)
        labels_all = torch.cat(labels)
        self._check_labels(labels_all, dataset)
        return Predictions(torch.cat(logits), labels_all)

    def _check_labels(self, labels: torch.Tensor, dataset: torch.utils.data.Dataset) -> None:
        n_classes = len(self.classes)
        bad = (labels < 0) | (labels >= n_classes)
        if bad.any():
            first = int(bad.nonzero()[0, 0])
            where = dataset_where(dataset)
            raise TargetError(
                f"label {int(labels[first])} of example {first} is outside 0..{n_classes - 1}",
                path=where.path if where else None, line=where.line if where else None,
                field=where.field if where else "data",
                fix="labels must be class indices; check the dataset or `data.classes`")

    @contextmanager
    def _located(self, field: str, section: str = "settings.attribution"):
        """Give attribution errors the audit file and the settings line."""
        try:
            yield
        except AuditError as exc:
            if exc.path is not None:
                raise
            field = exc.field or f"{section}.{field}"
            where = self.target.spec.model.where if field.startswith("model") else self.settings.where
            raise type(exc)(exc.message, path=self.target.spec.path, line=where.line if where else None,
                            field=field, fix=exc.fix) from None
