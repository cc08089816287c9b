"""The one seeded draw: which examples a sample, a reference set or a sanity check looks at."""

from __future__ import annotations

import torch


def seeded_draw(n: int, size: int | None, seed: int) -> torch.Tensor:
    """The first `size` positions (all when None) of a permutation of `range(n)` fixed by `seed`,
    in drawn order: the same on every device and run."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order if size is None else order[:size]
