"""Training Feature Attribution (Bacha & George, arXiv 2510.09135):

    TFA_j(x_i) = ∇_{x_i} S_GC((x_i, y_i), z_j)              (C, H, W), signed
    TFA_j^smooth(x_i) = 1/n Σ_k ∇_{x_i} S_GC((x_i + ε_k, y_i), z_j),  ε_k ~ N(0, σ²)

a saliency map on training image i for test example j: which of its pixels make its loss
gradient point the way test j's does. Second order (∂²ℓ/∂θ∂x): one double backward per
pair and noise sample, batched with `torch.func` (`vmap(grad(cos ∘ grad_θ ℓ))`) or, on large
models, one after another with the pairs of one noisy training image sharing its forward and
first backward (`one_image_many_tests`), with the ops
that lack one run as composites (`second_order.py`). Test gradients are exact (never
projected): only the top-k pairs are computed. Under `influence: kernel` the fixed direction is
the kernel score's, Pᵀ(UᵀU + λI)⁻¹u_z normalised (`TrainingIndex.tfa_directions`): the map is then
the gradient of the score that ranked the pair, up to a positive factor per test example.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from auditor.attribution.gradients import example_loss
from auditor.attribution.memory import Chunked, rows_within, saved_bytes
from auditor.attribution.second_order import twice_differentiable

EPS = 1e-12
ROW_BYTES_PER_PARAMETER = 16     # a double backward holds the parameter gradient and its graph: ~4 copies,
                                 # besides the activations its graph keeps (measured: `row_bytes`)
MAX_ROWS = 256                   # (pair, sample) rows per call for small models (16 pairs × 16 samples)
MIN_VMAP_ROWS = 32               # fewer rows fit at once (large models): one row at a time, vmap measured
                                 # 0.45x that loop on ResNet-18 (benchmarks/tfa.py); 2.5x it on the sample CNN
TFA_BUDGET_BYTES = 2 * 2**30     # ResNet-18 at 32 px: 7 rows per chunk; with layers [fc] at 224 px: 32
GRAPH_PEAK = 3                   # a row's peak over the bytes its graph saves: 2.3-2.6x measured on
                                 # ResNet-18 at 224 px (vmapped rows; tests/test_memory.py)


FORMULA = 3     # in the maps' cache key: 2 = the cosine's gradient as the double backward's grad_outputs
                # (rows one at a time; 2026-12-01): float32 maps moved by up to ~1e-3 of their scale on
                # ResNets (the old formula's rounding; benchmarks/RESULTS.md "TFA: pairs per second");
                # 3 = SmoothGrad noise seeded per training image (`image_seed`), not per pair


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


def one_image_many_tests(model: nn.Module, names: list[str]):
    """`attribute(x (1, C, H, W), y (1,), g_tests (m, P)) → (m, C, H, W)`: one image's maps for
    several test directions from one forward and one first backward (its graph kept), one plain
    double backward per direction (autograd on the model itself, eval mode): for large models,
    where few rows fit at once, faster than vmap; pairs that share a training image and its noise
    share the forward and first backward. The cosine's gradient in the parameter gradient g is
    handed to each double backward as its `grad_outputs` (`cosine_direction`) instead of being
    differentiated through a concatenated, normalised copy of g: the same map without a graph over
    P-vectors (ResNet-50: a fifth of the time went to concatenating, normalising and
    differentiating them)."""
    params = [p for n, p in model.named_parameters() if n in set(names)]

    def attribute(x: torch.Tensor, y: torch.Tensor, g_tests: torch.Tensor) -> torch.Tensor:
        image = x.detach().requires_grad_(True)
        with torch.enable_grad():
            grads = torch.autograd.grad(F.cross_entropy(model(image), y), params, create_graph=True)
            plain = [g.detach() for g in grads]
            return torch.stack([torch.autograd.grad(grads, image, grad_outputs=cosine_direction(plain, g_test),
                                                    retain_graph=i < len(g_tests) - 1)[0][0]
                                for i, g_test in enumerate(g_tests)])

    return attribute


def cosine_direction(grads: list[torch.Tensor], g_test: torch.Tensor) -> list[torch.Tensor]:
    """∂ cos(g, g_test) / ∂g, shaped as the parameters `grads` (g split by parameter; `g_test`
    flat, unit): (g_test − cos · g/‖g‖) / ‖g‖, or g_test / EPS where ‖g‖ is clamped to EPS."""
    tests = [t.view_as(g) for t, g in zip(g_test.split([g.numel() for g in grads]), grads)]
    norm = torch.stack([g.square().sum() for g in grads]).sum().sqrt()
    if norm < EPS:
        return [t / EPS for t in tests]
    cos = torch.stack([(g * t).sum() for g, t in zip(grads, tests)]).sum() / norm
    return [(t - cos * g / norm) / norm for g, t in zip(grads, tests)]


def row_bytes(model: nn.Module, names: list[str], image: torch.Tensor, label: torch.Tensor) -> int:
    """Bytes one (pair, sample) row holds, measured by one double backward on `image (C, H, W)`:
    the graph of its forward and first backward at the real input size, and the parameter gradient."""
    chosen = set(names)
    params = [p for n, p in model.named_parameters() if n in chosen]
    x = image[None].detach().clone().requires_grad_(True)   # a view would count its whole batch

    def run() -> None:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), label.reshape(1))
            flat = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, create_graph=True)])
            flat.square().sum().backward(inputs=[x])

    with twice_differentiable("TFA"):
        held = saved_bytes(run, model)
    return GRAPH_PEAK * held + ROW_BYTES_PER_PARAMETER * sum(p.numel() for p in params)


def tfa(model: nn.Module, names: list[str], train_images: torch.Tensor, train_labels: torch.Tensor,
        test_grads: torch.Tensor, samples: int = 0, sigma: float = 0.1, seed: int = 0,
        rows: int | None = None, pair_seeds: Sequence[int] | None = None, cost: int | None = None) -> TfaMaps:
    """TFA maps for pairs `(train_images[p], train_labels[p])` × `test_grads[p]` (unit, `(p, P)`).

    `samples` > 0 applies SmoothGrad with noise σ = `sigma` × (each image's value range),
    drawn for pair p from its own seed `pair_seeds[p]` (default `seed + p`): a pair's map does
    not depend on which other pairs share the call. The (pair, noise sample) double backwards
    run `rows` at a time: by default as many as fit `TFA_BUDGET_BYTES` at `cost` bytes each
    (`row_bytes`, measured on the first image when not given), at most `MAX_ROWS`, halved on
    out-of-memory; vmapped when at least `MIN_VMAP_ROWS` fit, else one after another (by the
    model and input size: the same way for every chunk, whatever `rows`), where pairs with the
    same image, label and seed share one forward and first backward (`same_noisy_image`).
    """
    n, draws = len(train_images), max(1, samples)
    pair_seeds = list(pair_seeds) if pair_seeds is not None else [seed + p for p in range(n)]
    if cost is None and n:
        cost = row_bytes(model, names, train_images[0], train_labels[0])
    fit = rows_within(cost or 1, MAX_ROWS, TFA_BUDGET_BYTES)
    vmapped = fit >= MIN_VMAP_ROWS                            # by model size: the same way for every chunk
    attribute = (vmap(grad(grad_cos_to(model, names)), in_dims=(0, 0, 0)) if vmapped
                 else one_image_many_tests(model, names))
    groups = [[p] for p in range(n)] if vmapped else same_noisy_image(train_images, train_labels, pair_seeds)
    chunks = Chunked(rows or fit, "TFA maps", "settings.attribution.layers",
                     "restrict `layers:` to fewer modules, or use a device with more memory")
    spread = (train_images.flatten(1).amax(1) - train_images.flatten(1).amin(1)).clamp_min(EPS) * sigma
    noise_of = lru_cache(maxsize=256)(lambda p: pair_noise(pair_seeds[p], samples, train_images.shape[1:]))
    total = torch.zeros_like(train_images)

    def run(part: slice) -> None:
        draw = range(part.start, part.stop)
        first = torch.tensor([groups[r // draws][0] for r in draw])
        x = train_images[first]
        if samples:
            noise = torch.stack([noise_of(int(p))[r % draws] for p, r in zip(first, draw)])
            x = x + noise.to(x.device) * spread[first].view(-1, 1, 1, 1)
        if vmapped:
            index = first.to(total.device)
            total.index_add_(0, index, attribute(x, train_labels[index], test_grads[index]).detach())
            return
        for row, r in enumerate(draw):
            members = torch.tensor(groups[r // draws], device=total.device)
            total.index_add_(0, members, attribute(x[row:row + 1], train_labels[members[:1]], test_grads[members]).detach())

    with twice_differentiable("TFA"):
        chunks.map(len(groups) * draws, run)
    signed = total / draws
    return TfaMaps(signed=signed, magnitude=signed.abs().sum(1))


def same_noisy_image(images: torch.Tensor, labels: torch.Tensor, seeds: Sequence[int]) -> list[list[int]]:
    """The pairs grouped by what their rows differentiate: the same image, label and noise seed
    (so the same noisy inputs); each group in the order its first pair comes."""
    groups: dict[tuple[int, int], list[list[int]]] = {}
    ordered: list[list[int]] = []
    for p, key in enumerate(zip(seeds, labels.tolist())):
        same = next((g for g in groups.get(key, []) if torch.equal(images[g[0]], images[p])), None)
        if same is None:
            same = []
            groups.setdefault(key, []).append(same)
            ordered.append(same)
        same.append(p)
    return ordered


def image_seed(seed: int, train_index: int) -> int:
    """The SmoothGrad noise seed of a training image's maps: the same in every run, process and
    pair, so the pairs that share a training image share its noisy inputs (and their work)."""
    digest = hashlib.sha256(f"{seed}:{train_index}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def pair_noise(seed: int, samples: int, shape: torch.Size) -> torch.Tensor:
    """`(samples, *shape)` standard normal noise from its own generator (on the CPU: the same on any device)."""
    return torch.randn((samples, *shape), generator=torch.Generator(device="cpu").manual_seed(seed))
