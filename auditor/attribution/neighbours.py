"""Label evidence from an image's neighbours in the model's own representation (deep k-NN).

For training image i with representation h_i (the feature map halfway through the network,
average-pooled to 2×2, or the input of the classifier head), let N_k(i) be its k nearest other
training images by cosine similarity. The neighbours' vote

    v_i(c) = |{j ∈ N_k(i) : y_j = c}| / k

estimates how its label should read from what the model has made of it. A model that fits a
wrong label bends its head and its late layers to it, so the own-label probability of a
memorised mislabel is ~1 and its loss ~0 (and on a ResNet-18 its penultimate features sit among
the wrong class too); its mid-depth representation keeps resembling its true class,
so `v_i(y_i)` stays low and the majority of the other classes names the label it should have
(Bahri et al., "Deep k-NN for noisy labels", ICML 2020; cleanlab Datalab's feature-based label
issues use the same neighbours). Measured in `benchmarks/label_errors.py` against the loss,
curvature-weighted self-influence and cleanlab (RESULTS.md).

Choices: two depths by default, each one reader (`representation_layers`, `Neighbours.averaged`):
the mid-depth map, which memorisation does not corrupt (on a ResNet-18 that fit 40 relabelled
digits the head's input ranked them at AUC 0.87, the half-way feature map at 0.9997), and the
head's input, which separates best on under-fit models (benchmarks/label_errors.py); cosine
similarity (scale-free across layers); the image itself excluded; ties in the top-k broken by
index (`torch.topk`); similarities in chunks of rows, so memory is `chunk × n` whatever the
training set's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIMILARITY_BUDGET = 2**24          # similarity entries held at once (64 MB of float32)
POOLED = 2                         # feature maps are average-pooled to POOLED × POOLED


@dataclass(frozen=True)
class Neighbours:
    """`indices (n, k)` nearest other training images, `similarity (n, k)` their cosines,
    `votes (n, C)` each class's share among them; `parts`, when the votes average several
    representations, each one's own neighbours."""

    indices: torch.Tensor
    similarity: torch.Tensor
    votes: torch.Tensor
    parts: tuple[Neighbours, ...] = ()

    def own_share(self, labels: torch.Tensor) -> torch.Tensor:
        """`(n,)` share of each image's neighbours that carry its own label."""
        return self.votes.gather(1, labels[:, None])[:, 0]

    def suggested(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(n,)` the other label most of the neighbours carry, and `(n,)` its share."""
        others = self.votes.scatter(1, labels[:, None], -1.0)
        share, label = others.max(1)
        return label, share

    @staticmethod
    def averaged(parts: list[Neighbours]) -> Neighbours:
        """The votes of several representations averaged (each depth one reader, equal weight);
        the neighbours named are the first representation's. One alone is returned as it is."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return Neighbours(first.indices, first.similarity, torch.stack([p.votes for p in parts]).mean(0), tuple(parts))


def nearest_neighbours(features: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int) -> Neighbours:
    """Each row's `k` nearest other rows of `features (n, D)` by cosine, and their label votes.

    Rows are compared `SIMILARITY_BUDGET // n` at a time against all `n` (never the `n × n` matrix).
    """
    n = len(features)
    k = min(k, n - 1)
    unit = F.normalize(features.float(), dim=1)
    chunk = max(1, SIMILARITY_BUDGET // max(1, n))
    indices, similarity = [], []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk), device=unit.device)
        sim = unit[rows] @ unit.T
        sim[torch.arange(len(rows), device=unit.device), rows] = -float("inf")       # not itself
        top = sim.topk(k, dim=1)
        indices.append(top.indices)
        similarity.append(top.values)
    index = torch.cat(indices) if indices else torch.zeros(0, k, dtype=torch.long)
    votes = F.one_hot(labels.to(index.device)[index], n_classes).float().mean(1) if k > 0 else \
        torch.zeros(n, n_classes)
    return Neighbours(index.cpu(), (torch.cat(similarity) if similarity else torch.zeros(0, k)).cpu(), votes.cpu())


def feature_maps(model: nn.Module, images: torch.Tensor) -> list[str]:
    """Names of the leaf modules whose output is a feature map `(b, C, H, W)`, in the order they run."""
    names, handles = [], []
    for name, module in model.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: names.append(name)
                if isinstance(out, torch.Tensor) and out.dim() == 4 and name not in names else None))
    try:
        with torch.no_grad():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return names


def last_linear(model: nn.Module) -> str | None:
    """The name of the model's last `nn.Linear` module (usually its classifier head)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None


def representation_layers(model: nn.Module, images: torch.Tensor, name: str | None = None) -> list[tuple[str, bool]]:
    """The modules whose output (or, for a head, input) vote on each image's label, and whether it is an input.

    Default: two depths, the feature map halfway through the network (the early layers of a model
    that fits a wrong label still read the image's true class; its last ones read the label it was
    given) and the input of the last `nn.Linear` (what the head separates); either alone when the
    model lacks the other. A named module alone gives its output; none found gives []."""
    modules = dict(model.named_modules())
    if name is not None:
        return [(name, False)] if name in modules else []
    maps = feature_maps(model, images)
    head = last_linear(model)
    return ([(maps[len(maps) // 2], False)] if maps else []) + ([(head, True)] if head is not None else [])


def pooled(value: torch.Tensor) -> torch.Tensor:
    """`(b, D)`: a feature map average-pooled to 2×2 (keeps where, drops fine detail), else flattened."""
    value = value.detach().float()
    if value.dim() == 4:
        value = F.adaptive_avg_pool2d(value, POOLED)
    return value.flatten(1).cpu()


class RecordRepresentation:
    """Context manager: a forward hook that keeps the pooled output (or input) of `module`."""

    def __init__(self, module: nn.Module, use_input: bool = False) -> None:
        self.module, self.use_input, self.values, self.handle = module, use_input, [], None

    def __enter__(self) -> RecordRepresentation:
        if self.use_input:
            self.handle = self.module.register_forward_pre_hook(lambda m, args: self.values.append(pooled(args[0])))
        else:
            self.handle = self.module.register_forward_hook(lambda m, args, out: self.values.append(pooled(out)))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    def take(self) -> torch.Tensor:
        """The representation of the last forward pass, and forget it."""
        value = self.values[-1]
        self.values.clear()
        return value
