"""Factored gradient projection (LoGra, Choe et al. 2024): a layer's per-example weight gradient
is a sum of outer products over positions, G = Σ_t δ_t a_tᵀ (output gradient δ, input or patch
a), so its projection by P_out ⊗ P_in is

    P_outᵀ G P_in = Σ_t (P_outᵀ δ_t)(P_inᵀ a_t)ᵀ,

computed from the small projected factors: the per-example gradient never exists. For a
convolution, P_inᵀ a_t for every position is one convolution with P_in as its kernel.

Each weight gets a `k_out × k_in` block of the features, sized from the budget (small layers
exactly: P = identity); the one-dimensional parameters (biases, BatchNorm) are taken exactly
and sparse-projected together. Entries are ±1/√k, so inner products are kept in expectation,
and every matrix is a function of (seed, parameter index): the same seed gives the same features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auditor.attribution.gradients import GradientComputer, bias_gradient, layer_gradients
from auditor.attribution.projection import Projector, make_projector, rademacher
from auditor.registry import PROJECTIONS


@dataclass(frozen=True)
class WeightBlock:
    """A weight's `k_out × k_in` block at `offset`: rows of the `(out, inp)` matrix it projects."""

    index: int
    out: int
    inp: int
    k_out: int
    k_in: int
    offset: int

    @property
    def width(self) -> int:
        return self.k_out * self.k_in


UNIFORM_SHARE = 0.1     # of the budget spread evenly over the groups whatever their measured shares


def plan_blocks(shapes: Sequence[torch.Size], out_dim: int,
                shares: Sequence[float] | None = None) -> tuple[list[WeightBlock], int]:
    """Share `out_dim` among the weights (≥ 2-D shapes) and the rest (1-D, one group).

    Each group gets dimensions in proportion to its weight: its share of the squared gradient
    norm (`shares`, one per parameter: the projection noise of a group's inner products scales
    with its norm, so the groups that carry the Grad-Cos get the dimensions), mixed with an even
    spread (`UNIFORM_SHARE`); evenly when `shares` is None. A group smaller than its allotment is
    kept whole and leaves the remainder to the others. Returns the weights' blocks (in parameter
    order) and the rest's width."""
    shares = list(shares) if shares is not None else [1.0] * len(shapes)
    groups = [(math.prod(s), shares[i], ("w", i, s[0], math.prod(s[1:]))) for i, s in enumerate(shapes) if len(s) >= 2]
    rest = [i for i, s in enumerate(shapes) if len(s) < 2]
    if rest:
        groups.append((sum(math.prod(shapes[i]) for i in rest), sum(shares[i] for i in rest), ("r",)))
    total = sum(share for _, share, _ in groups) or 1.0
    weight = [(1 - UNIFORM_SHARE) * share / total + UNIFORM_SHARE / len(groups) for _, share, _ in groups]
    order = sorted(range(len(groups)), key=lambda g: groups[g][0] / weight[g])    # saturating groups first
    budget, left, sized, rest_width = out_dim, sum(weight), {}, 0
    for g in order:
        size, _, group = groups[g]
        allotted = max(1, min(size, int(budget * weight[g] / left)))
        left -= weight[g]
        if group[0] == "r":
            rest_width = allotted
        else:
            _, i, o, n = group
            k_out = o if allotted == size else max(1, min(o, math.isqrt(allotted)))
            k_in = n if allotted == size else max(1, min(n, allotted // k_out))
            sized[i], allotted = (o, n, k_out, k_in), k_out * k_in
        budget -= allotted
    blocks, offset = [], 0
    for i in sorted(sized):
        o, n, k_out, k_in = sized[i]
        blocks.append(WeightBlock(i, o, n, k_out, k_in, offset))
        offset += k_out * k_in
    return blocks, rest_width


def gradient_shares(computer: GradientComputer, images: torch.Tensor, labels: torch.Tensor,
                    chunk: int = 1) -> list[float] | None:
    """Each parameter's share of the summed squared per-example gradient norm over a probe batch
    (None when a gradient is NaN or Inf: featurizing then names the example)."""
    totals = torch.zeros(len(computer.names), dtype=torch.float64)
    for start in range(0, len(images), chunk):
        grads = computer.per_parameter(images[start:start + chunk], labels[start:start + chunk])
        totals += torch.stack([g.double().pow(2).sum() for g in grads]).cpu()
    if not torch.isfinite(totals).all():
        return None
    return (totals / totals.sum().clamp_min(1e-300)).tolist()


@PROJECTIONS.register("factored")
class FactoredProjector(Projector):
    """`P_out ⊗ P_in` per weight, exact-then-sparse for the 1-D parameters; with a computer that
    sees layers (`HookGradients`), `features` projects the layers' inputs and output gradients
    instead of their gradients."""

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0, shapes: Sequence[torch.Size] | None = None,
                 shares: Sequence[float] | None = None) -> None:
        shapes = [torch.Size(s) for s in shapes] if shapes is not None else [torch.Size([in_dim])]
        if sum(math.prod(s) for s in shapes) != in_dim:
            raise ValueError(f"parameter shapes hold {sum(math.prod(s) for s in shapes)} values, not {in_dim}")
        self.shapes, self.sizes = shapes, [math.prod(s) for s in shapes]
        self.blocks, rest_width = plan_blocks(shapes, out_dim, shares)
        self.by_index = {block.index: block for block in self.blocks}
        self.rest = [i for i, s in enumerate(shapes) if len(s) < 2]
        self.rest_offset = sum(block.width for block in self.blocks)
        rest_dim = sum(self.sizes[i] for i in self.rest)
        self.rest_projector = make_projector(rest_dim, rest_width, "sparse", seed) if rest_dim else None
        super().__init__(in_dim, self.rest_offset + (self.rest_projector.out_dim if rest_dim else 0), seed)
        self._matrices: dict[tuple[int, torch.device], tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        self._kernels: dict[tuple[int, torch.device], torch.Tensor] = {}

    @classmethod
    def for_shapes(cls, shapes: Sequence[torch.Size], out_dim: int, seed: int = 0,
                   shares: Sequence[float] | None = None) -> FactoredProjector:
        return cls(sum(math.prod(s) for s in shapes), out_dim, seed, shapes, shares)

    @property
    def layout(self) -> list[int]:
        """`[k_out, k_in]` of every weight, then the rest's width: what the features' columns mean."""
        return [k for block in self.blocks for k in (block.k_out, block.k_in)] + [self.out_dim - self.rest_offset]

    def matrices(self, block: WeightBlock, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`(P_out (out, k_out), P_in (inp, k_in))` of one weight; None where the side is kept exactly."""
        key = (block.index, device)
        if key not in self._matrices:
            base = self.seed * 1_000_003 + 2 * block.index
            p_out = rademacher(block.out, block.k_out, base).to(device) if block.k_out < block.out else None
            p_in = rademacher(block.inp, block.k_in, base + 1).to(device) if block.k_in < block.inp else None
            self._matrices[key] = (p_out, p_in)
        return self._matrices[key]

    def kernel(self, block: WeightBlock, module: nn.Conv2d, device: torch.device) -> torch.Tensor:
        """P_in as a contiguous `(k_in, C_in, kh, kw)` convolution kernel (made once per device)."""
        key = (block.index, device)
        if key not in self._kernels:
            p_in = self.matrices(block, device)[1]
            self._kernels[key] = p_in.T.reshape(block.k_in, *module.weight.shape[1:]).contiguous()
        return self._kernels[key]

    def working_size(self, computer: GradientComputer) -> int:
        """With hooks: the features, the 1-D parameters' gradients and any weight the fast path cannot factor."""
        if not computer.sees_layers:
            return computer.dim
        unfactored = sum(self.sizes[i] for i in self.by_index
                         if not _factors(computer.modules.get(computer.names[i].rpartition(".")[0])))
        return self.out_dim + sum(self.sizes[i] for i in self.rest) + unfactored

    # --- from per-example gradients (any gradient computer; the reference for the fast path) ---

    def project_blocks(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        """Per-parameter `(b, numel)` blocks (or any column split of their concatenation) → `(b, d)`."""
        if [block.shape[1] for block in blocks] != self.sizes:
            width = sum(block.shape[1] for block in blocks)
            if width != self.in_dim:
                raise ValueError(f"projector expects {self.in_dim} inputs, got {width}")
            blocks = list(torch.cat(blocks, dim=1).split(self.sizes, dim=1))
        out = self._empty(blocks[0])
        for block in self.blocks:
            out[:, block.offset:block.offset + block.width] = self._project_weight(
                block, blocks[block.index].reshape(-1, block.out, block.inp)).flatten(1)
        self._add_rest(out, {i: blocks[i] for i in self.rest})
        return out

    def _project_weight(self, block: WeightBlock, grad: torch.Tensor) -> torch.Tensor:
        """`P_outᵀ G P_in` of per-example gradients `G (b, out, inp)`."""
        p_out, p_in = self.matrices(block, grad.device)
        grad = grad.float()
        if p_in is not None:
            grad = grad @ p_in
        return grad if p_out is None else torch.einsum("boi,ok->bki", grad, p_out)

    def _empty(self, like: torch.Tensor) -> torch.Tensor:
        return torch.zeros(like.shape[0], self.out_dim, device=like.device, dtype=torch.float32)

    def _add_rest(self, out: torch.Tensor, grads: dict[int, torch.Tensor]) -> None:
        """The 1-D parameters' exact gradients (zeros where a layer did not run), sparse-projected."""
        if self.rest_projector is None:
            return
        flat = [grads[i].flatten(1).float() if i in grads else out.new_zeros(len(out), self.sizes[i])
                for i in self.rest]
        out[:, self.rest_offset:] = self.rest_projector.project_blocks(flat)

    # --- from layer inputs and output gradients (a computer that sees layers: one forward and backward) ---

    def features(self, computer: GradientComputer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not computer.sees_layers:
            return super().features(computer, images, labels)
        position = {name: i for i, name in enumerate(computer.names)}
        out, rest = self._empty(images), {}
        for name, module, x, g in computer.layer_io(images, labels):
            prefix = f"{name}." if name else ""
            weight = position.get(prefix + "weight")
            if weight in self.by_index and _factors(module):
                block = self.by_index[weight]
                out[:, block.offset:block.offset + block.width] += self._layer(block, module, x, g).flatten(1)
                grads = {"bias": bias_gradient(module, g)} if module.bias is not None else {}
            else:
                grads = layer_gradients(module, x, g)
            for suffix, value in grads.items():
                i = position.get(prefix + suffix)
                if i in self.by_index:
                    block = self.by_index[i]
                    out[:, block.offset:block.offset + block.width] += self._project_weight(
                        block, value.reshape(-1, block.out, block.inp)).flatten(1)
                elif i is not None:
                    rest[i] = rest[i] + value if i in rest else value
        self._add_rest(out, rest)
        return out

    def _layer(self, block: WeightBlock, module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """`(b, k_out, k_in)`: Σ over positions of (P_outᵀ δ)(P_inᵀ a)ᵀ for a Linear or Conv2d call.
        (Forming the exact gradient first, by the grouped convolution, measured slower even where
        it needs fewer multiply-adds: benchmarks/featurize.py.)"""
        p_out, p_in = self.matrices(block, x.device)
        x, g = x.float(), g.float()
        if isinstance(module, nn.Linear):
            a = x.reshape(len(x), -1, x.shape[-1]) if p_in is None else (x @ p_in).reshape(len(x), -1, block.k_in)
            d = g.reshape(len(g), -1, g.shape[-1]) if p_out is None else (g @ p_out).reshape(len(g), -1, block.k_out)
            return d.transpose(1, 2) @ a
        if p_in is None:
            a = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
        else:
            a = F.conv2d(x, self.kernel(block, module, x.device), None, module.stride, module.padding,
                         module.dilation).flatten(2)
        d = g.flatten(2) if p_out is None else torch.einsum("bol,ok->bkl", g.flatten(2), p_out)
        return d @ a.transpose(1, 2)


def _factors(module: nn.Module) -> bool:
    """Whether the layer's weight gradient is a sum of outer products the fast path can factor."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)

