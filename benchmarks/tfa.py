"""TFA cost: (train, test) pairs per second with SmoothGrad as the engine runs it (`vmap` over
pair × noise-sample rows, or those rows one after another for a model where fewer than
`MIN_VMAP_ROWS` fit the memory budget) against the obviously-correct loop (one double backward
per pair and sample with `torch.autograd.grad(create_graph=True)`), in one run on the same pairs.

    python -m benchmarks.tfa [--threads 2] [--device auto] [--samples 16]

Models: the sample audits' CNN (17k parameters, 28×28) on 64 pairs and a stock torchvision
ResNet-18 (11.2M parameters, 32×32) on 4 pairs; both trained one epoch on real Fashion-MNIST,
all parameters, true labels, each pair's noise from its own seed. The loop is timed on a quarter
of the pairs (at least 2). Writes benchmarks/results/tfa.json.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from auditor.attribution.gradients import FuncGradients, select_parameters
from auditor.attribution.memory import rows_within
from auditor.attribution.tfa import (EPS, MAX_ROWS, MIN_VMAP_ROWS, ROW_BYTES_PER_PARAMETER, TFA_BUDGET_BYTES, pair_noise,
                                     tfa)
from auditor.target import resolve_device
from benchmarks.common import environment, peak_memory_mb, timer, write_json

MODELS = {"small_cnn": 64, "resnet18": 4}


def model_and_pairs(name: str, n_pairs: int):
    """The trained model, `n_pairs` training images with labels, and unit exact test gradients."""
    from sample_audits.train import train

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


def measure(name: str, n_pairs: int, samples: int, device: torch.device) -> dict:
    model, names, images, labels, tests = model_and_pairs(name, n_pairs)
    model, images, labels, tests = model.to(device), images.to(device), labels.to(device), tests.to(device)
    seeds = [1000 + p for p in range(n_pairs)]
    n_loop = max(2, n_pairs // 4)
    times: dict[str, float] = {}
    tfa(model, names, images[:1], labels[:1], tests[:1], samples, 0.1, pair_seeds=seeds[:1])       # warm-up, untimed
    loop_tfa(model, names, images[:1], labels[:1], tests[:1], 1, 0.1, seeds)
    with timer(times, "batched"):
        batched = tfa(model, names, images, labels, tests, samples, 0.1, pair_seeds=seeds).signed
    with timer(times, "loop"):
        reference = loop_tfa(model, names, images[:n_loop], labels[:n_loop], tests[:n_loop], samples, 0.1, seeds)
    scale = float(reference.abs().max())
    fit = rows_within(ROW_BYTES_PER_PARAMETER * tests.shape[1], MAX_ROWS, TFA_BUDGET_BYTES)
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "pairs": n_pairs,
            "engine_rows": "vmap" if fit >= MIN_VMAP_ROWS else "one after another",
            "smoothgrad_samples": samples, "pairs_per_second": round(n_pairs / times["batched"], 3),
            "seconds_per_pair": round(times["batched"] / n_pairs, 3),
            "loop_pairs_per_second": round(n_loop / times["loop"], 3), "loop_pairs": n_loop,
            "speedup_vs_loop": round((times["loop"] / n_loop) / (times["batched"] / n_pairs), 2),
            "max_abs_diff_vs_loop_over_scale": float((batched[:n_loop] - reference).abs().max()) / max(scale, EPS),
            "peak_memory_mb": round(peak_memory_mb(device))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name in args.models:
        start = time.perf_counter()
        rows.append(measure(name, MODELS[name], args.samples, device))
        print({**rows[-1], "wall_s": round(time.perf_counter() - start, 1)}, flush=True)
    path = write_json("tfa.json" if device.type == "cpu" else f"tfa_{device.type}.json",
                      {"rows": rows, **environment(device)})
    print(f"written {path}")


if __name__ == "__main__":
    main()
