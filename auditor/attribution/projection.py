"""Random projection of per-example gradients from P to d dimensions (inner products kept in expectation).

Base: `Projector`. Implementations:
- `IdentityProjector`: exact gradients (used when P ≤ d).
- `RademacherProjector`: dense ±1/√d entries, generated blockwise from the seed on the
  gradients' device for every call, never stored as a whole P×d matrix.
- `SparseProjector` (sparse JL / count sketch): each input coordinate goes to `s` random
  buckets with random signs, scaled by 1/√s; costs O(P·s) per example and stores only
  the P bucket indices and signs.
- `FactoredProjector` (module `factored`): P_out ⊗ P_in per weight, from layer inputs and
  output gradients without forming the per-example gradient.
All are deterministic functions of (seed, P, d): the same seed gives the same features.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch

from auditor.attribution.gradients import GradientComputer
from auditor.registry import PROJECTIONS

BLOCK_ROWS = 8192


class Projector(abc.ABC):
    """Maps `(b, P)` gradients to `(b, d)`. The contract every kind honours: `project_blocks`
    (the concatenation of column blocks, projected without concatenating them)."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0) -> None:
        self.in_dim, self.out_dim, self.seed = in_dim, out_dim, seed

    @classmethod
    def for_shapes(cls, shapes: Sequence[torch.Size], out_dim: int, seed: int = 0,
                   shares: Sequence[float] | None = None) -> Projector:
        """The projector of gradients of parameters with these shapes (flattened, concatenated);
        `shares` (each parameter's share of the gradient norm) matter to the factored kind only."""
        return cls(sum(math.prod(s) for s in shapes), out_dim, seed)

    @property
    def layout(self) -> list[int]:
        """What the output columns mean, beyond (kind, dimensions, seed): nothing for dense kinds."""
        return []

    def features(self, computer: GradientComputer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`(b, d)` projected per-example gradients of the loss on `(images, labels)`."""
        return self.project_blocks([g.flatten(1) for g in computer.per_parameter(images, labels)])

    def working_size(self, computer: GradientComputer) -> int:
        """Values held per example while featurizing (sizes the chunks): its whole gradient."""
        return computer.dim

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """`(b, P)` → `(b, d)`."""
        return self.project_blocks([grads])

    @abc.abstractmethod
    def project_blocks(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """The concatenation of `(b, P_l)` blocks (P_l summing to P), projected to `(b, d)`."""

    def transpose(self, rows: torch.Tensor) -> torch.Tensor:
        """`(m, d)` → `(m, P)`: Pᵀ applied to each row, by one backward through `project` (every kind
        is linear, so its gradient is the adjoint): maps a direction in feature space back to the
        parameters without a transpose written for each kind."""
        probe = torch.zeros(len(rows), self.in_dim, device=rows.device, requires_grad=True)
        with torch.enable_grad():
            projected = self.project(probe)
            return torch.autograd.grad(projected, probe, grad_outputs=rows.to(projected))[0]


class ColumnProjector(Projector):
    """A projection that is a sum over input columns: each block's contribution computed alone."""

    def project_blocks(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        out = None
        offset = 0
        for block in blocks:
            part = self._project_block(block, offset)
            out = part if out is None else out + part
            offset += block.shape[1]
        if offset != self.in_dim:
            raise ValueError(f"projector expects {self.in_dim} inputs, got {offset}")
        return out

    @abc.abstractmethod
    def _project_block(self, block: torch.Tensor, offset: int) -> torch.Tensor:
        """Contribution of input columns `[offset, offset + block.shape[1])`."""


class IdentityProjector(Projector):
    """The exact gradients (P ≤ d): the blocks side by side."""

    def __init__(self, in_dim: int, seed: int = 0) -> None:
        super().__init__(in_dim, in_dim, seed)

    def project_blocks(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        out = torch.cat(blocks, dim=1)
        if out.shape[1] != self.in_dim:
            raise ValueError(f"projector expects {self.in_dim} inputs, got {out.shape[1]}")
        return out


def rademacher(rows: int, cols: int, seed: int) -> torch.Tensor:
    """`(rows, cols)` of ±1/√cols from its own generator (on the CPU: the same on any device)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    signs = torch.randint(0, 2, (rows, cols), generator=generator, dtype=torch.int8)
    return (signs.float() * 2 - 1) / cols ** 0.5


@PROJECTIONS.register("rademacher")
class RademacherProjector(ColumnProjector):
    """Dense ±1/√d matrix; rows generated in blocks of `BLOCK_ROWS` from `(seed, block index)`."""

    def _project_block(self, block: torch.Tensor, offset: int) -> torch.Tensor:
        b, width = block.shape
        out = torch.zeros(b, self.out_dim, device=block.device, dtype=torch.float32)
        row = offset
        while row < offset + width:
            index, start = divmod(row, BLOCK_ROWS)
            stop = min((index + 1) * BLOCK_ROWS, offset + width)
            matrix = self.rows(index, block.device)[start:start + stop - row]
            out += block[:, row - offset:stop - offset].float() @ matrix
            row = stop
        return out

    def rows(self, index: int, device: torch.device) -> torch.Tensor:
        """Rows `[index·BLOCK_ROWS, (index+1)·BLOCK_ROWS)` of the projection matrix, `(BLOCK_ROWS, d)`."""
        return rademacher(BLOCK_ROWS, self.out_dim, self.seed * 1_000_003 + index).to(device)


@PROJECTIONS.register("sparse")
class SparseProjector(ColumnProjector):
    """Sparse JL: coordinate j adds `sign·x_j/√s` to `s` buckets chosen by a seeded hash."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, nonzeros: int = 1) -> None:
        super().__init__(in_dim, out_dim, seed)
        generator = torch.Generator().manual_seed(seed)
        self.nonzeros = nonzeros
        self.buckets = torch.randint(0, out_dim, (nonzeros, in_dim), generator=generator, dtype=torch.int64)
        signs = torch.randint(0, 2, (nonzeros, in_dim), generator=generator, dtype=torch.int8)
        self.signs = (signs.float() * 2 - 1) / nonzeros ** 0.5
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device_cache:
            self._device_cache[device] = (self.buckets.to(device), self.signs.to(device))
        return self._device_cache[device]

    def _project_block(self, block: torch.Tensor, offset: int) -> torch.Tensor:
        buckets, signs = self._on(block.device)
        width = block.shape[1]
        out = torch.zeros(block.shape[0], self.out_dim, device=block.device, dtype=torch.float32)
        for h in range(self.nonzeros):
            cols = buckets[h, offset:offset + width]
            out.index_add_(1, cols, block.float() * signs[h, offset:offset + width])
        return out


def make_projector(in_dim: int, out_dim: int, kind: str = "sparse", seed: int = 0,
                   shapes: Sequence[torch.Size] | None = None, shares: Sequence[float] | None = None) -> Projector:
    """Exact when P ≤ d; otherwise the named random projection of parameters of `shapes`
    (default: one flat vector of `in_dim`)."""
    if in_dim <= out_dim:
        return IdentityProjector(in_dim, seed)
    return PROJECTIONS.get(kind).for_shapes(shapes or [torch.Size([in_dim])], out_dim, seed, shares)
