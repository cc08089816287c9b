"""TFA cost: (train, test) pairs per second with SmoothGrad as the engine runs it (`vmap` over
pair × noise-sample rows, or those rows one after another for a model where fewer than
`MIN_VMAP_ROWS` fit the memory budget) against the obviously-correct loop (one double backward
per pair and sample with `torch.autograd.grad(create_graph=True)`), and against the
forward-over-reverse candidate (`forward_over_reverse`: ∇_x cos = ∇_x (g(x)·w) with
w = (v − cos·ĝ)/‖g‖ from one plain gradient, the mixed product a JVP in θ along w inside a
gradient in x, `torch.func`, rowed the engine's way), in one run on the same pairs.

    python -m benchmarks.tfa [--threads 2] [--device auto] [--samples 16] [--models ...]

Models: the sample audits' CNN (17k parameters, 28×28, 64 pairs) and a stock torchvision
ResNet-18 (11.2M, 32×32, 4 pairs), both trained one epoch on real Fashion-MNIST; at 224×224
(random weights: the cost does not depend on them) ResNet-18, ResNet-50 (25.6M) and a
DeiT-tiny-sized torchvision ViT (5.5M, patch 16, 12 layers, width 192), 2 pairs each. All
parameters, true labels, each pair's noise from its own seed. The loop is timed on a quarter of
the pairs (at least 2). `speedup_224` is forward-over-reverse ÷ the engine on ResNet-50 at 224.
The bound: `engine_over_plain_gradient`, the engine's time over that of the plain per-example
parameter gradients of the same pairs and noise samples (`plain_gradients`), which TFA contains.
Writes benchmarks/results/tfa.json.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from torch.func import grad, jvp, vmap

from auditor.attribution.gradients import FuncGradients, example_loss, select_parameters
from auditor.attribution.memory import rows_within
from auditor.attribution.second_order import twice_differentiable
from auditor.attribution.tfa import EPS, MAX_ROWS, MIN_VMAP_ROWS, TFA_BUDGET_BYTES, pair_noise, row_bytes, tfa
from auditor.target import resolve_device
from benchmarks.common import RESULTS, environment, peak_memory_mb, timer, write_json

MODELS = {"small_cnn": 64, "resnet18": 4, "resnet18_224": 2, "resnet50_224": 2, "vit_tiny_224": 2}


def untrained_224(name: str, n_pairs: int):
    """A 224-px model with random weights, `n_pairs` random images with labels and unit test gradients."""
    import torchvision

    torch.manual_seed(0)
    model = {"resnet18_224": lambda: torchvision.models.resnet18(num_classes=10),
             "resnet50_224": lambda: torchvision.models.resnet50(num_classes=10),
             "vit_tiny_224": lambda: torchvision.models.VisionTransformer(
                 image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768,
                 num_classes=10)}[name]().eval()
    names = select_parameters(model)
    images, labels = torch.rand(2 * n_pairs, 3, 224, 224), torch.arange(2 * n_pairs) % 10
    with twice_differentiable("benchmark"):
        tests = F.normalize(FuncGradients(model, names).flat(images[n_pairs:], labels[n_pairs:]), dim=1)
    return model, names, images[:n_pairs], labels[:n_pairs], tests


def model_and_pairs(name: str, n_pairs: int):
    """The trained model, `n_pairs` training images with labels, and unit exact test gradients."""
    from sample_audits.train import train

    if name.endswith("_224"):
        return untrained_224(name, n_pairs)
    if name == "small_cnn":
        from sample_audits.models import small_cnn
        from sample_audits.train import training_set

        dataset, model = training_set({"n_train": 3000}), small_cnn()
    else:
        from benchmarks.tda_all_layers import fashion32, resnet18

        dataset, model = fashion32("train", 3000), resnet18()
    torch.manual_seed(0)
    model = train(model, dataset, epochs=1, seed=0)
    names = select_parameters(model)
    images, labels = dataset.batch(torch.arange(n_pairs))
    tests_x, tests_y = dataset.batch(torch.arange(1000, 1000 + n_pairs))
    tests = F.normalize(FuncGradients(model, names).flat(tests_x, tests_y), dim=1)
    return model, names, images, labels, tests


def loop_tfa(model, names, images, labels, tests, samples: int, sigma: float, seeds: list[int]) -> torch.Tensor:
    """The reference: each (pair, noise sample) by one explicit double backward."""
    params = [p for n, p in model.named_parameters() if n in set(names)]
    spread = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).clamp_min(EPS) * sigma
    maps = torch.zeros_like(images)
    for p in range(len(images)):
        noise = pair_noise(seeds[p], samples, images.shape[1:]).to(images.device)
        for k in range(samples):
            x = (images[p] + noise[k] * spread[p]).unsqueeze(0).requires_grad_(True)
            loss = F.cross_entropy(model(x), labels[p:p + 1])
            g = torch.cat([t.flatten() for t in torch.autograd.grad(loss, params, create_graph=True)])
            cos = g @ tests[p] / g.norm().clamp_min(EPS)
            maps[p] += torch.autograd.grad(cos, x)[0][0]
    return maps / samples


def plain_gradients(model, names, images, labels, samples: int) -> None:
    """The bound: the first-order part alone, one ordinary forward and backward to the parameters
    per (pair, noise sample). TFA needs this gradient and a mixed second-order product on top of
    it, which costs at least about as much again (a Hessian-vector product is a constant multiple
    of a gradient, never less than one), so TFA cannot go much below 2× this."""
    params = [p for n, p in model.named_parameters() if n in set(names)]
    for p in range(len(images)):
        for _ in range(samples):
            torch.autograd.grad(F.cross_entropy(model(images[p:p + 1]), labels[p:p + 1]), params)


def forward_over_reverse(model, names: list[str]):
    """`attribute(x, y, v) → (C, H, W)` of one row: ∇_x (g(x)·w), w = (v − cos·ĝ)/‖g‖ (the
    derivative of cos(g(x), v)), the mixed product as a JVP in θ along w inside a gradient in x."""
    selected, loss = example_loss(model, names)

    def attribute(x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        g = grad(loss)(selected, x, y)
        flat = torch.cat([g[n].flatten() for n in names])
        norm = flat.norm().clamp_min(EPS)
        w_flat = (v - (flat @ v / norm) * flat / norm) / norm
        w, offset = {}, 0
        for n in names:
            w[n] = w_flat[offset:offset + selected[n].numel()].view_as(selected[n])
            offset += selected[n].numel()
        return grad(lambda image: jvp(lambda p: loss(p, image, y), (selected,), (w,))[1])(x)

    return attribute


def candidate_tfa(model, names, images, labels, tests, samples: int, sigma: float, seeds: list[int],
                  batched: bool) -> torch.Tensor:
    """Forward-over-reverse maps of the same (pair, noise sample) rows as `tfa`, vmapped or one by one."""
    one = forward_over_reverse(model, names)
    spread = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).clamp_min(EPS) * sigma
    rows = [(p, images[p] + pair_noise(seeds[p], samples, images.shape[1:])[k].to(images.device) * spread[p])
            for p in range(len(images)) for k in range(samples)]
    pairs = torch.tensor([p for p, _ in rows], device=images.device)
    x = torch.stack([row for _, row in rows])
    if batched:
        maps = torch.cat([vmap(one)(x[i:i + MAX_ROWS], labels[pairs[i:i + MAX_ROWS]], tests[pairs[i:i + MAX_ROWS]])
                          for i in range(0, len(x), MAX_ROWS)])
    else:
        maps = torch.stack([one(x[i], labels[pairs[i]], tests[pairs[i]]) for i in range(len(x))])
    return torch.zeros_like(images).index_add_(0, pairs, maps.detach()) / samples


def measure(name: str, n_pairs: int, samples: int, device: torch.device) -> dict:
    model, names, images, labels, tests = model_and_pairs(name, n_pairs)
    model, images, labels, tests = model.to(device), images.to(device), labels.to(device), tests.to(device)
    seeds = [1000 + p for p in range(n_pairs)]
    n_loop = max(2, n_pairs // 4)
    times: dict[str, float] = {}
    fit = rows_within(row_bytes(model, names, images[0], labels[0]), MAX_ROWS, TFA_BUDGET_BYTES)
    with twice_differentiable("benchmark"):
        tfa(model, names, images[:1], labels[:1], tests[:1], samples, 0.1, pair_seeds=seeds[:1])   # warm-up, untimed
        loop_tfa(model, names, images[:1], labels[:1], tests[:1], 1, 0.1, seeds)
        with timer(times, "batched"):
            batched = tfa(model, names, images, labels, tests, samples, 0.1, pair_seeds=seeds).signed
        with timer(times, "loop"):
            reference = loop_tfa(model, names, images[:n_loop], labels[:n_loop], tests[:n_loop], samples, 0.1, seeds)
        candidate_tfa(model, names, images[:1], labels[:1], tests[:1], 1, 0.1, seeds, fit >= MIN_VMAP_ROWS)
        with timer(times, "forward_over_reverse"):
            candidate = candidate_tfa(model, names, images, labels, tests, samples, 0.1, seeds, fit >= MIN_VMAP_ROWS)
    with timer(times, "plain_gradient"):
        plain_gradients(model, names, images, labels, samples)
    scale = float(reference.abs().max())
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "pairs": n_pairs,
            "image_size": images.shape[-1], "engine_rows": "vmap" if fit >= MIN_VMAP_ROWS else "one after another",
            "smoothgrad_samples": samples, "pairs_per_second": round(n_pairs / times["batched"], 3),
            "seconds_per_pair": round(times["batched"] / n_pairs, 3),
            "loop_pairs_per_second": round(n_loop / times["loop"], 3), "loop_pairs": n_loop,
            "speedup_vs_loop": round((times["loop"] / n_loop) / (times["batched"] / n_pairs), 2),
            "max_abs_diff_vs_loop_over_scale": float((batched[:n_loop] - reference).abs().max()) / max(scale, EPS),
            "forward_over_reverse_pairs_per_second": round(n_pairs / times["forward_over_reverse"], 3),
            "forward_over_reverse_speedup": round(times["batched"] / times["forward_over_reverse"], 2),
            "forward_over_reverse_max_abs_diff_over_scale":
                float((candidate[:n_loop] - reference).abs().max()) / max(scale, EPS),
            "plain_gradient_seconds_per_pair": round(times["plain_gradient"] / n_pairs, 3),
            "engine_over_plain_gradient": round(times["batched"] / times["plain_gradient"], 2),
            "peak_memory_mb": round(peak_memory_mb(device))}


def shared_image(name: str, samples: int, device: torch.device, tests: int = 4) -> dict:
    """One training image paired with `tests` test examples under one noise seed: one `tfa` call
    (its forward and first backward shared, rows one after another) against a call per pair (the
    engine before it seeded noise per training image); the same maps."""
    model, names, images, labels, directions = model_and_pairs(name, max(MODELS[name], tests))
    model, image, label = model.to(device), images[:1].to(device), labels[:1].to(device)
    directions = directions[:tests].to(device)
    times: dict[str, float] = {}
    with twice_differentiable("benchmark"):
        cost = row_bytes(model, names, image[0], label[0])
        if rows_within(cost, MAX_ROWS, TFA_BUDGET_BYTES) >= MIN_VMAP_ROWS:
            return {}                                     # vmapped rows: nothing is shared
        tfa(model, names, image, label, directions[:1], samples, 0.1, pair_seeds=[7], cost=cost)   # warm-up
        with timer(times, "shared"):
            together = tfa(model, names, image.expand(tests, -1, -1, -1), label.expand(tests), directions,
                           samples, 0.1, pair_seeds=[7] * tests, cost=cost).signed
        with timer(times, "apart"):
            apart = torch.cat([tfa(model, names, image, label, directions[t:t + 1], samples, 0.1, pair_seeds=[7],
                                   cost=cost).signed for t in range(tests)])
    return {"shared_image_tests": tests, "shared_image_seconds_per_pair": round(times["shared"] / tests, 3),
            "shared_image_speedup": round(times["apart"] / times["shared"], 2),
            "shared_image_max_abs_diff_over_scale": float((together - apart).abs().max() / apart.abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--shared-only", action="store_true",
                        help="measure only the pairs sharing a training image and add them to the results file's rows")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.shared_only:
        path = RESULTS / ("tfa.json" if device.type == "cpu" else f"tfa_{device.type}.json")
        document = json.loads(path.read_text())
        for row in document["rows"]:
            if row["model"] in args.models:
                row.update(shared_image(row["model"], args.samples, device))
                print(row, flush=True)
        document["shared_command"] = ("python -m benchmarks.tfa --shared-only " + " ".join(
            f"--{k} {v}" for k, v in (("threads", args.threads), ("samples", args.samples))))
        print(f"written {write_json(path.name, document)}")
        return
    rows = []
    for name in args.models:
        start = time.perf_counter()
        rows.append(measure(name, MODELS[name], args.samples, device))
        print({**rows[-1], "wall_s": round(time.perf_counter() - start, 1)}, flush=True)
    by_model = {row["model"]: row for row in rows}
    speedup = by_model["resnet50_224"]["forward_over_reverse_speedup"] if "resnet50_224" in by_model else None
    path = write_json("tfa.json" if device.type == "cpu" else f"tfa_{device.type}.json",
                      {"rows": rows, "speedup_224": speedup, "command": "python -m benchmarks.tfa " + " ".join(
                          f"--{k} {v}" for k, v in (("threads", args.threads), ("samples", args.samples))),
                       **environment(device)})
    print(f"written {path}")


if __name__ == "__main__":
    main()
