"""The engine computes each quantity an audit needs once per run, lazily, for every rule.

    predictions (test set) ─▶ selections                                   predictions.py
    training index: gradient features (cached) ─▶ influence top-k         training_index.py
    TFA maps on the top-k proponents                                       tfa_cache.py
    saliency maps (+VAR) of test images                                    saliency_cache.py
    training images' mid-depth representation ─▶ nearest neighbours       representations.py

`Engine` composes these parts and is what checks read (`auditor.checks.base.AuditEngine`);
`stats` counts what this engine computed (featurized, scored, tfa_pairs).
"""

from __future__ import annotations

from collections import Counter
from functools import cached_property

import torch

from auditor.attribution.influence import Influence
from auditor.attribution.neighbours import Neighbours
from auditor.data import image_path
from auditor.engine.plan import memory_plan, resident_peak, stage_budgets
from auditor.engine.predictions import Predictions, predict, resolve
from auditor.engine.representations import Representations
from auditor.engine.saliency_cache import SaliencyCache, SaliencyMaps
from auditor.engine.sanity import accuracy_warnings, pixel_warnings, sample
from auditor.engine.tfa_cache import TfaCache, TfaResult
from auditor.engine.training_index import TrainingIndex
from auditor.spec import Selection
from auditor.target import Target

__all__ = ["Engine", "Predictions", "SaliencyMaps", "TfaResult"]


class Engine:
    """Holds the target and the parts that compute and cache every quantity of one audit."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.settings = target.spec.settings
        self.attribution = self.settings.attribution
        self.classes = target.classes
        self.device = target.device
        self.stats: Counter[str] = Counter()
        self.index = TrainingIndex(target, self.gradient_labels, self.stats)
        self.tfa = TfaCache(self.index, self.stats)
        self._saliency = SaliencyCache(target)
        self.representations = Representations(target, lambda: self.index.keys, lambda: self.index.labels, self.stats)

    @cached_property
    def predictions(self) -> Predictions:
        """Model outputs on the whole test set (checked for NaN/Inf and label range)."""
        where = self.target.where
        return predict(self.target.model, self.target.test, self.device, self.target.rows(self.settings.batch_size),
                       len(self.classes), where.get("test"), where.get("model"))

    def select(self, selection: Selection) -> torch.Tensor:
        """Sorted test indices picked by a rule's `on:`."""
        return resolve(selection, self.predictions, self.classes, self.settings.seed)

    def gradient_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels used for test gradients: predicted (default) or true."""
        p = self.predictions
        return (p.predicted if self.attribution.test_label == "predicted" else p.labels)[indices]

    @property
    def train_labels(self) -> torch.Tensor:
        return self.index.labels

    def influence(self, indices: torch.Tensor) -> Influence:
        """Top-k proponents and opponents of each selected test example."""
        return self.index.influence(indices)

    def tfa_pairs(self, pairs: list[tuple[int, int]]) -> torch.Tensor:
        """Signed TFA maps `(p, C, H, W)` of any (test, train) pairs (cached like the top-k pairs)."""
        return self.tfa.pairs(pairs)

    def grad_cos(self, train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        """`(len(train), len(test))` projected Grad-Cos of chosen training and test examples."""
        return (self.index.train_features(train) @ self.index.test_features(test).T).cpu()

    def neighbours(self, k: int, layer: str | None = None) -> Neighbours:
        """Each training image's `k` nearest others in the model's representation, with their label votes."""
        return self.representations.neighbours(k, layer)

    @cached_property
    def train_losses(self) -> torch.Tensor:
        """Cross-entropy of every training image under its own label: the free mislabel signal."""
        n, size = len(self.target.train), self.target.rows(max(self.settings.batch_size, 1024))
        parts = []
        for start in range(0, n, size):
            images, labels = self.train_batch(torch.arange(start, min(n, start + size)))
            parts.append(torch.nn.functional.cross_entropy(self.logits(images), labels, reduction="none"))
        return torch.cat(parts) if parts else torch.zeros(0)

    def saliency(self, indices: torch.Tensor, method: str | None = None, use_var: bool = False) -> SaliencyMaps:
        """Maps of the predicted class for each selected test image, VAR-refined if `use_var`."""
        return self._saliency(self.predictions, indices, method, use_var)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """`(b, classes)` model outputs for any images (e.g. occluded ones), in batches, on the CPU."""
        model, size = self.target.model, self.target.rows(self.settings.batch_size)
        with torch.no_grad():
            parts = [model(images[i:i + size].to(self.device)).float().cpu() for i in range(0, len(images), size)]
        return torch.cat(parts) if parts else torch.zeros(0, len(self.classes))

    def attribute(self, images: torch.Tensor, classes: torch.Tensor, method: str | None = None) -> torch.Tensor:
        """`(b, C', H, W)` saliency of any images for one class each (not cached: for training images)."""
        attributor = self._saliency.method(method)
        size = self._saliency.chunk_size
        parts = [attributor.attribute(images[i:i + size].to(self.device), classes[i:i + size, None].to(self.device))
                 .detach()[:, 0].cpu() for i in range(0, len(images), size)]
        return torch.cat(parts) if parts else torch.zeros(0, *images.shape[1:])

    def test_images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.target.test_images(indices)

    def image_path(self, kind: str, index: int) -> str | None:
        """The file of test or training image `index`, when its dataset knows it."""
        if kind not in ("test", "train"):
            return None
        return image_path(self.target.test if kind == "test" else self.target.train, index)

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.target.train_batch(indices)

    def memory_note(self, rules: list) -> str:
        """What `rules` may take in memory beyond what is loaded now (`plan.memory_plan`): each
        stage's budget, and the maps the rules keep."""
        on_device = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return memory_plan(resident_peak(), stage_budgets(rules), self.kept_map_bytes(rules), on_device)

    def kept_map_bytes(self, rules: list) -> int:
        """Bytes of the maps `rules` leave cached: per source and method, the most any rule measures
        (its `sample`, `k` TFA maps per example, a class reference of `reference_size` each), and
        never more than one saliency map per test image and method (the cache holds each once)."""
        image = self.test_images(torch.arange(1))[0]
        per_map = 4 * (image.numel() + image[0].numel())        # signed (C, H, W) and magnitude (H, W), float32
        counts: dict[tuple, int] = {}
        for rule in rules:
            p = rule.params
            if getattr(p, "source", None) is None:
                continue
            n = len(self.select(rule.selection))
            n = min(n, getattr(p, "sample", None) or n) * (p.k if p.source == "tfa" else 1)
            n += getattr(p, "reference_size", 0) * len(self.classes)
            if p.source != "tfa":
                n = min(n, len(self.target.test))
            key = (p.source, getattr(p, "method", None))
            counts[key] = max(counts.get(key, 0), n)
        return per_map * sum(counts.values())

    def sanity(self) -> list[str]:
        """Warnings about what the model is fed (`sanity.py`), from a seeded sample of each split."""
        seed = self.settings.seed
        images, labels = self.train_batch(sample(len(self.target.train), seed))
        train_correct = float((self.logits(images).argmax(1) == labels).float().mean()) if len(labels) else 1.0
        test_correct = float(self.predictions.correct.float().mean())
        test = self.test_images(sample(len(self.target.test), seed))
        skipped = [f"left out {len(files)} unreadable {split} image{'s' * (len(files) != 1)} "
                   f"(data.skip_unreadable): {', '.join(files)}" for split, files in self.target.skipped.items()]
        return skipped + accuracy_warnings(train_correct, test_correct, len(self.classes)) + pixel_warnings(images, test)
