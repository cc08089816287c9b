"""Grad-Cos influence: S(z_i, z_j) = <g_i, g_j> / (‖g_i‖ ‖g_j‖), scored against the store in
chunks with streaming top-k, so the train × test matrix is never held in memory.

Positive scores are proponents (helpful), negative ones opponents (harmful).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TopK:
    """`indices (m, k)` of training examples and their `scores (m, k)`, best first."""

    indices: torch.Tensor
    scores: torch.Tensor


@dataclass(frozen=True)
class Influence:
    """For test examples `test_indices (m,)`: top-k proponents and opponents."""

    test_indices: torch.Tensor
    proponents: TopK
    opponents: TopK


def grad_cos_topk(queries: torch.Tensor, chunks: Iterable[tuple[int, torch.Tensor]], k: int,
                  ) -> tuple[TopK, TopK]:
    """Stream over `(start, train features (c, d))` chunks, in ascending `start` order;
    `queries (m, d)` unit-normalised.

    Returns top-`k` proponents (highest scores) and top-`k` opponents (lowest scores) per
    query. Memory: O(m·(k + chunk)).
    """
    m = queries.shape[0]
    device = queries.device
    best_s = torch.full((m, 0), float("-inf"), device=device)
    best_i = torch.zeros((m, 0), dtype=torch.long, device=device)
    worst_s, worst_i = best_s.clone(), best_i.clone()
    for start, block in chunks:
        scores = queries @ block.to(device, queries.dtype).T                      # (m, c)
        index = torch.arange(start, start + block.shape[0], device=device).expand(m, -1)
        best_s, best_i = _merge(best_s, best_i, scores, index, k)
        worst_s, worst_i = _merge(worst_s, worst_i, -scores, index, k)
    return TopK(best_i.cpu(), best_s.cpu()), TopK(worst_i.cpu(), (-worst_s).cpu())


def _merge(values: torch.Tensor, indices: torch.Tensor, new_values: torch.Tensor, new_indices: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `k` largest of the running and the new candidates, ties broken by lower index.

    Chunks arrive in ascending index order and the running list keeps ties in index order, so
    a stable sort by value alone breaks ties by the lower index. A wide chunk is first cut to
    its own top `k` (`torch.topk`, ~30× cheaper than sorting it), unless a tie straddles the
    cut, where topk's choice among equals is unspecified.
    """
    if new_values.shape[1] > 4 * k:
        top = torch.topk(new_values, k, dim=1).indices.sort(dim=1).values    # back in index order
        kth = new_values.gather(1, top).min(dim=1, keepdim=True).values
        if bool(((new_values >= kth).sum(dim=1) == k).all()):
            new_values, new_indices = new_values.gather(1, top), new_indices.gather(1, top)
    all_values = torch.cat([values, new_values], dim=1)
    all_indices = torch.cat([indices, new_indices], dim=1)
    keep = min(k, all_values.shape[1])
    top = torch.sort(all_values, dim=1, descending=True, stable=True).indices[:, :keep]
    return all_values.gather(1, top), all_indices.gather(1, top)


def grad_cos_matrix(queries: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """The full `(m, n)` score matrix of unit-normalised features (small problems and tests)."""
    return queries @ train.T
