"""Training Feature Attribution (Bacha & George, arXiv 2510.09135):

    TFA_j(x_i) = ∇_{x_i} S_GC((x_i, y_i), z_j)              (C, H, W), signed
    TFA_j^smooth(x_i) = 1/n Σ_k ∇_{x_i} S_GC((x_i + ε_k, y_i), z_j),  ε_k ~ N(0, σ²)

a saliency map on training image i for test example j: which of its pixels make its loss
gradient point the way test j's does. Second order (∂²ℓ/∂θ∂x): one double backward per
pair and noise sample, batched with `torch.func` (`vmap(grad(cos ∘ grad_θ ℓ))`). Test
gradients are exact (never projected): only the top-k pairs are computed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import grad, vmap

from auditor.attribution.gradients import example_loss

EPS = 1e-12


@dataclass(frozen=True)
class TfaMaps:
    """Maps for pairs: `signed (p, C, H, W)` and the channel-summed magnitude `magnitude (p, H, W)`."""

    signed: torch.Tensor
    magnitude: torch.Tensor


def grad_cos_to(model: nn.Module, names: list[str]):
    """`cos(x, y, g_test)`: Grad-Cos of example (x, y) with a fixed unit test gradient `g_test (P,)`."""
    selected, loss = example_loss(model, names)

    def cos(x: torch.Tensor, y: torch.Tensor, g_test: torch.Tensor) -> torch.Tensor:
        g = grad(loss)(selected, x, y)
        flat = torch.cat([g[n].flatten() for n in names])
        return flat @ g_test / flat.norm().clamp_min(EPS)

    return cos


def tfa(model: nn.Module, names: list[str], train_images: torch.Tensor, train_labels: torch.Tensor,
        test_grads: torch.Tensor, samples: int = 0, sigma: float = 0.1, seed: int = 0,
        batch_size: int = 16, pair_seeds: Sequence[int] | None = None) -> TfaMaps:
    """TFA maps for pairs `(train_images[p], train_labels[p])` × `test_grads[p]` (unit, `(p, P)`).

    `samples` > 0 applies SmoothGrad with noise σ = `sigma` × (each image's value range),
    drawn for pair p from its own seed `pair_seeds[p]` (default `seed + p`): a pair's map does
    not depend on which other pairs share the call.
    """
    cos = grad_cos_to(model, names)
    attribute = vmap(grad(cos), in_dims=(0, 0, 0))
    pair_seeds = list(pair_seeds) if pair_seeds is not None else [seed + p for p in range(len(train_images))]
    maps = []
    for start in range(0, len(train_images), batch_size):
        x = train_images[start:start + batch_size]
        y = train_labels[start:start + batch_size]
        g = test_grads[start:start + batch_size]
        if samples:
            spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).clamp_min(EPS) * sigma
            noise = torch.stack([pair_noise(pair_seeds[start + p], samples, x.shape[1:]) for p in range(len(x))],
                                dim=1).to(x.device)
            noisy = (x.unsqueeze(0) + noise * spread.view(1, -1, 1, 1, 1)).flatten(0, 1)
            out = attribute(noisy, y.repeat(samples), g.repeat(samples, 1))
            maps.append(out.view(samples, *x.shape).mean(0))
        else:
            maps.append(attribute(x, y, g))
    signed = torch.cat(maps) if maps else torch.zeros_like(train_images)
    return TfaMaps(signed=signed.detach(), magnitude=signed.detach().abs().sum(1))


def pair_seed(seed: int, test_index: int, train_index: int) -> int:
    """The SmoothGrad noise seed of one (test, train) pair: the same in every run and process."""
    digest = hashlib.sha256(f"{seed}:{test_index}:{train_index}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def pair_noise(seed: int, samples: int, shape: torch.Size) -> torch.Tensor:
    """`(samples, *shape)` standard normal noise from its own generator (on the CPU: the same on any device)."""
    return torch.randn((samples, *shape), generator=torch.Generator(device="cpu").manual_seed(seed))
