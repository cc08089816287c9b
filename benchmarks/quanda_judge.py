"""quanda's ShortcutDetectionMetric as an independent judge of our Grad-Cos rows.

    /path/to/python-with-quanda -m benchmarks.quanda_judge rows.pt

`rows.pt` (written by benchmarks/efficacy.py): `explanations (m, n_train)` for shortcut errors
(patched test images of other classes predicted as the shortcut class, so quanda's own
filters are off), `train_labels`, `shortcut_indices`, `shortcut_cls`. Prints `{"auprc": ...}`:
the mean over errors of the AUPRC of ranking the shortcut (patched) training images first.
Runs in its own interpreter: quanda's dependencies stay out of ours.
"""

from __future__ import annotations

import json
import sys

import torch
from quanda.metrics.downstream_eval import ShortcutDetectionMetric


def main() -> None:
    data = torch.load(sys.argv[1], weights_only=False)
    labels = data["train_labels"]
    train = torch.utils.data.TensorDataset(torch.zeros(len(labels), 1), labels)
    metric = ShortcutDetectionMetric(model=torch.nn.Linear(1, 1), train_dataset=train,
                                     shortcut_indices=list(data["shortcut_indices"]), shortcut_cls=data["shortcut_cls"],
                                     filter_by_non_shortcut=False, filter_by_shortcut_pred=False)
    metric.update(data["explanations"])
    print(json.dumps({"auprc": float(metric.compute()["score"])}))


if __name__ == "__main__":
    main()
