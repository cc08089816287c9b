"""Grid pointing game (VAR paper, §5): does each base method, with and without VAR, put the
attribution for a class into the grid cell that holds it?

    python -m benchmarks.pointing_game [--grids 500] [--threads 2]

A fully convolutional CNN (global average pooling, so it accepts 56×56 inputs) is trained on
single 28×28 Fashion-MNIST images. Grids are 2×2 mosaics of four test images of distinct
classes, drawn (seeded) from test images the model classifies correctly with probability
≥ 0.5. For every grid and each of its four classes as target: base map of that class, and
VAR over K = the four classes present. Metrics over channel-summed |map|:
- region_share: attribution mass inside the target's cell ÷ total mass (uniform = 0.25);
- pointing_acc: the map's maximum lies inside the target's cell.
Writes benchmarks/results/pointing_game.json.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from auditor.attribution.saliency import make_method
from auditor.registry import SALIENCY_METHODS
from auditor.attribution.var import var
from auditor.data import fashion_mnist
from benchmarks.common import environment, write_json
from sample_audits.train import train, training_set


def gap_cnn(num_classes: int = 10, width: int = 24) -> nn.Module:
    """Fully convolutional: works on any input size."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def make_grids(model: nn.Module, n_grids: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(n, 3, 56, 56)` grids and `(n, 4)` classes in cell order (top-left, top-right, bottom-left, bottom-right)."""
    test = fashion_mnist("test", channels=3)
    images, labels = test.batch(torch.arange(len(test)))
    with torch.no_grad():
        probs = torch.cat([model(images[s:s + 1000]).softmax(1) for s in range(0, len(images), 1000)])
    confident = probs.gather(1, labels[:, None]).squeeze(1) >= 0.5
    pools = [torch.nonzero(confident & (labels == c)).flatten() for c in range(10)]
    g = torch.Generator().manual_seed(seed)
    grids, classes = [], []
    for _ in range(n_grids):
        chosen = torch.randperm(10, generator=g)[:4]
        picks = [pools[c][torch.randint(len(pools[c]), (1,), generator=g)].item() for c in chosen.tolist()]
        top = torch.cat([images[picks[0]], images[picks[1]]], dim=2)
        bottom = torch.cat([images[picks[2]], images[picks[3]]], dim=2)
        grids.append(torch.cat([top, bottom], dim=1))
        classes.append(chosen)
    return torch.stack(grids), torch.stack(classes)


def cell_scores(magnitude: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Region share and pointing hit of `(n, 56, 56)` maps for one cell index (0..3)."""
    n, h, w = magnitude.shape
    r, c = divmod(cell, 2)
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2] = True
    total = magnitude.flatten(1).sum(1)
    inside = magnitude[:, mask].sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))
    hit = mask.flatten()[magnitude.flatten(1).argmax(1)] & (total > 0)
    return share, hit.float()


def evaluate(method_name: str, model: nn.Module, grids: torch.Tensor, classes: torch.Tensor,
             batch: int, options: dict) -> dict:
    method = make_method(method_name, model, **options)
    scores = {"base": ([], []), "var": ([], [])}
    for start in range(0, len(grids), batch):
        x, k = grids[start:start + batch], classes[start:start + batch]
        maps = method.attribute(x, k).detach()                     # (b, 4, C, H, W): all four classes at once
        for cell in range(4):
            for variant, m in (("base", maps[:, cell]), ("var", var(maps, cell))):
                share, hit = cell_scores(m.abs().sum(1), cell)
                scores[variant][0].append(share)
                scores[variant][1].append(hit)
    return {variant: {"region_share": round(torch.cat(s).mean().item(), 4),
                      "pointing_acc": round(torch.cat(h).mean().item(), 4)}
            for variant, (s, h) in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grids", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=30000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = train(gap_cnn(), training_set({"n_train": args.n_train}), args.epochs, args.seed).eval()
    grids, classes = make_grids(model, args.grids, args.seed)
    options = {"integrated_gradients": {"steps": 32, "internal_batch_size": 1024}}
    result = {"n_grids": len(grids), "methods": {}, "seconds": {}, **environment(torch.device("cpu"))}
    for name in SALIENCY_METHODS.names:
        start = time.perf_counter()
        result["methods"][name] = evaluate(name, model, grids, classes, 100, options.get(name, {}))
        result["seconds"][name] = round(time.perf_counter() - start, 1)
        base, refined = result["methods"][name]["base"], result["methods"][name]["var"]
        print(f"{name:22s} base share {base['region_share']:.3f} acc {base['pointing_acc']:.3f}   "
              f"VAR share {refined['region_share']:.3f} acc {refined['pointing_acc']:.3f}   "
              f"({result['seconds'][name]} s)")
    print(f"written {write_json('pointing_game.json', result)}")


if __name__ == "__main__":
    main()
