"""The label benchmark's Datalab-style candidate: its chunked leave-one-out vote equals an explicit
per-image loop over sorted Euclidean distances."""

from __future__ import annotations

import torch

from benchmarks.label_errors import leave_one_out_votes


def reference_votes(features, labels, k, classes):
    """One image at a time: sort every other image by distance, count the first k's labels."""
    rows = []
    for i, row in enumerate(features):
        others = [(float(((row - other) ** 2).sum()), int(labels[j])) for j, other in enumerate(features) if j != i]
        others.sort()
        counts = [0.0] * classes
        for _, label in others[:k]:
            counts[label] += 1.0 / k
        rows.append(counts)
    return torch.tensor(rows, dtype=torch.float64)


def test_leave_one_out_votes_match_an_explicit_loop():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(15)
    features = torch.randn(45, 4, generator=generator, dtype=torch.float64) + 1.5 * torch.eye(4, dtype=torch.float64)[labels]
    fast = leave_one_out_votes(features, labels, k=5, classes=3)
    slow = reference_votes(features, labels, k=5, classes=3)
    assert torch.allclose(fast, slow)
    assert torch.allclose(fast.sum(1), torch.ones(45, dtype=torch.float64))
