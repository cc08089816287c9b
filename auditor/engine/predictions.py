"""The model's predictions on the test set, and the test examples a rule's `on:` picks."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from auditor import data as data_module
from auditor.errors import TargetError, error_at
from auditor.sampling import seeded_draw
from auditor.spec import Selection, Where
from auditor.suggest import did_you_mean


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


def predict(model: nn.Module, dataset: Dataset, device: torch.device, batch_size: int, n_classes: int,
            where: Where | None, model_where: Where | None) -> Predictions:
    """Logits and labels of every example (NaN/Inf outputs and out-of-range labels are errors)."""
    logits, labels = [], []
    with torch.no_grad():
        for images, targets, indices in data_module.batches(dataset, batch_size=batch_size):
            out = model(images.to(device, non_blocking=True)).float().cpu()
            bad = ~torch.isfinite(out).all(dim=1)
            if bad.any():
                first = int(indices[bad.nonzero()[0, 0]])
                raise error_at(TargetError, model_where,
                               f"the model's output contains NaN or Inf (first at example {first})",
                               "check the checkpoint for NaN weights and the inputs' normalisation", field="model")
            logits.append(out)
            labels.append(targets)
    all_labels = torch.cat(labels)
    check_labels(all_labels, n_classes, where)
    return Predictions(torch.cat(logits), all_labels)


def check_labels(labels: torch.Tensor, n_classes: int, where: Where | None) -> None:
    """Labels must be class indices `0..n_classes-1`; `where` is the dataset's YAML position."""
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise error_at(TargetError, where, f"label {int(labels[first])} of example {first} is outside 0..{n_classes - 1}",
                       "labels must be class indices; check the dataset or `data.classes`",
                       field=where.field if where else "data")


def class_index(name: str | int, classes: tuple[str, ...], where: Where) -> int:
    """Resolve a class given by name or index against the dataset's class names."""
    if isinstance(name, int):
        if 0 <= name < len(classes):
            return name
        raise where.error(f"class index {name} is out of range", fix=f"use 0..{len(classes) - 1}")
    if name in classes:
        return classes.index(name)
    folded = [c.casefold() for c in classes]
    if folded.count(name.casefold()) == 1:        # `shirt` is Shirt (unless it is ambiguous)
        return folded.index(name.casefold())
    raise where.error(f"unknown class '{name}'", fix=did_you_mean(name, classes, "classes"))


def resolve(selection: Selection, predictions: Predictions, classes: tuple[str, ...], seed: int) -> torch.Tensor:
    """Indices (sorted, long) of the test examples `selection` picks."""
    labels, predicted = predictions.labels, predictions.predicted
    n = labels.shape[0]
    kind = selection.kind
    if kind == "all":
        return torch.arange(n)
    if kind == "misclassified":
        return torch.nonzero(predicted != labels).flatten()
    if kind == "correct":
        return torch.nonzero(predicted == labels).flatten()
    if kind in ("class", "predicted"):
        c = class_index(selection.value, classes, selection.where)
        return torch.nonzero((labels if kind == "class" else predicted) == c).flatten()
    if kind == "sample":
        return seeded_draw(n, selection.value, seed).sort().values
    indices = torch.tensor(selection.value, dtype=torch.long)
    if indices.numel() and int(indices.max()) >= n:
        raise selection.where.error(f"index {int(indices.max())} is out of range for a test set of {n} examples",
                                    fix=f"use indices in 0..{n - 1}")
    return indices.unique()
