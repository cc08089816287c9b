"""The label benchmark's Gaussian candidate: its batched Cholesky posterior equals an explicit
per-image loop over class densities with a dense inverse, in float64."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks.label_errors import gaussian_log_posterior


def reference_log_posterior(features, labels, classes, shrinkage):
    """One image and one class at a time: Mahalanobis distances under the pooled, shrunk covariance."""
    unit = [F.normalize(row.double(), dim=0) for row in features]
    means = [sum(u for u, y in zip(unit, labels) if y == c) / int((labels == c).sum()) for c in range(classes)]
    dim = len(unit[0])
    covariance = torch.zeros(dim, dim, dtype=torch.float64)
    for u, y in zip(unit, labels):
        covariance += torch.outer(u - means[y], u - means[y]) / len(unit)
    average = covariance.diagonal().mean()
    covariance = (1 - shrinkage) * covariance + shrinkage * average * torch.eye(dim, dtype=torch.float64)
    inverse = torch.linalg.inv(covariance)
    rows = []
    for u in unit:
        energies = [-0.5 * float((u - m) @ inverse @ (u - m)) for m in means]
        top = max(energies)
        normaliser = top + math.log(sum(math.exp(e - top) for e in energies))
        rows.append([e - normaliser for e in energies])
    return torch.tensor(rows, dtype=torch.float64)


def test_gaussian_posterior_matches_an_explicit_loop():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(20)
    features = torch.randn(60, 5, generator=generator) + 2.0 * F.one_hot(labels, 5).float()
    fast = gaussian_log_posterior(features, labels, classes=3, shrinkage=0.1)
    slow = reference_log_posterior(features, labels, classes=3, shrinkage=0.1)
    assert torch.allclose(fast.double(), slow, atol=1e-5)
    assert (fast.argmax(1) == labels).float().mean() > 0.8            # separable clusters are read


def test_gaussian_posterior_across_chunk_boundaries_matches_the_loop():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (5000,), generator=generator)           # three chunks of 2048
    features = torch.randn(5000, 6, generator=generator)
    fast = gaussian_log_posterior(features, labels, classes=4)
    slow = reference_log_posterior(features, labels, classes=4, shrinkage=0.01)
    assert torch.allclose(fast.double(), slow, atol=1e-5)
