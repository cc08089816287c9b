"""Grad-Cos influence: S(z_i, z_j) = <g_i, g_j> / (‖g_i‖ ‖g_j‖), scored against the store in
chunks with streaming top-k, so the train × test matrix is never held in memory.

The curvature-aware kernel (DESIGN.md §1.4, `settings.attribution.influence: kernel`) scores
S(z, z_i) = u_zᵀ (UᵀU + λI)⁻¹ u_i on the same unit-norm stored features U (n × d): a d × d
matrix summed over the store's chunks (never the n × n one), factored once, and applied to the
queries, which are then scored against the store as Grad-Cos queries are. λ = damping × the
mean diagonal of UᵀU (= damping · n / d for unit rows). benchmarks/lds.py: at the default
damping 1 its LDS is 0.164 / 0.139 on two sample CNNs, where Grad-Cos has 0.088 / 0.068 and
Kronfluence's EK-FAC 0.135 / 0.122 (RESULTS.md).

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


def kernel_factor(chunks: Iterable[tuple[int, torch.Tensor]], dim: int, damping: float) -> torch.Tensor:
    """Cholesky factor `(d, d)` float64 of UᵀU + λI, UᵀU summed over `(start, (c, d))` chunks."""
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    for _, block in chunks:
        block = block.double().cpu()
        gram += block.T @ block
    damping_term = damping * float(gram.diagonal().mean()) if dim else 0.0
    gram.diagonal().add_(max(damping_term, 1e-12))        # positive definite even for an empty or zero store
    return torch.linalg.cholesky(gram)


def kernel_queries(queries: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """`(m, d)` queries u_z → (UᵀU + λI)⁻¹ u_z (float32, on the queries' device): scoring them
    against the store by inner products gives the kernel scores."""
    solved = torch.cholesky_solve(queries.double().cpu().T, factor).T
    return solved.to(device=queries.device, dtype=torch.float32)


def grad_cos_topk(queries: torch.Tensor, chunks: Iterable[tuple[int, torch.Tensor]], k: int,
                  ) -> tuple[TopK, TopK]:
    """Stream over `(start, train features (c, d))` chunks, in ascending `start` order;
    `queries (m, d)` unit-normalised (or kernel-transformed: the scores are inner products).

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
