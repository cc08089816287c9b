"""The engine computes each quantity an audit needs once per run, lazily, for every rule.

    predictions (test set) ─▶ selections
    gradient features (train, cached) ─▶ influence top-k ─▶ TFA maps      (attribution/)
    saliency maps (+VAR) of test images                                    (attribution/)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import torch

from auditor import data as data_module
from auditor import selection as selection_module
from auditor.errors import TargetError
from auditor.selection import Selection
from auditor.target import Target, dataset_where

log = logging.getLogger(__name__)


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


class Engine:
    """Holds the target and caches every computed quantity for the rules of one audit."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.settings = target.spec.settings
        self.classes = target.classes
        self.device = target.device

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
