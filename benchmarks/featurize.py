"""Featurization cost vs one plain batched forward+backward epoch over the same images.

    python -m benchmarks.featurize [--n-train 10000] [--threads 2] [--device auto]
    python -m benchmarks.featurize --profile      # where one batch's time goes (torch.profiler)

The bound: per-example gradients need one forward and one backward pass, like a training
epoch, so the ratio cannot go much below 1.0. Writes benchmarks/results/featurize.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from auditor.attribution.factored import gradient_shares
from auditor.attribution.features import Featurizer, featurized_shards, missing
from auditor.attribution.gradients import FuncGradients, HookGradients, select_parameters
from auditor.attribution.projection import make_projector
from auditor.attribution.feature_store import FeatureStore
from auditor.data import batches
from auditor.target import resolve_device
from auditor.progress import quiet
from benchmarks.common import RESULTS, environment, peak_memory_mb, timer, trained_small_cnn, write_json


def plain_epoch(model, dataset, device, batch_size: int) -> None:
    """One ordinary forward+backward epoch (parameter gradients summed over each batch)."""
    for images, labels, _ in batches(dataset, batch_size=batch_size):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(images.to(device)), labels.to(device)).backward()


def run_featurize(model, dataset, device, computer, projection_dim, batch_size, chunk, kind: str) -> None:
    """Featurize the whole set as the engine does (with the `kind` projection; factored blocks
    sized from the first 16 images' gradients, as `TrainingIndex` does)."""
    gradients = computer(model, select_parameters(model))
    featurizer = Featurizer(gradients, projector(gradients, dataset, device, projection_dim, kind), chunk)
    with tempfile.TemporaryDirectory() as root:
        store = FeatureStore(Path(root), "bench", len(dataset), featurizer.dim, 4096)
        with quiet():
            for _ in featurized_shards(store, dataset, featurizer, device, missing(store), batch_size):
                pass


def projector(gradients, dataset, device, projection_dim: int, kind: str):
    """The projector the engine makes: factored blocks sized from the first 16 images' gradients."""
    shares = None
    if kind == "factored":
        images, labels, _ = next(iter(batches(dataset, torch.arange(16), 16)))
        shares = gradient_shares(gradients, images.to(device), labels.to(device), 16)
    return make_projector(gradients.dim, projection_dim, kind, shapes=gradients.shapes, shares=shares)


def half_precision_agreement(model, dataset, device, projection_dim: int, precision: str = "bfloat16") -> dict:
    """Autocast `precision` vs float32 features of the same images (first 1,050 training images:
    50 as queries over 1,000): per-image feature cosine, and Spearman ρ of the queries' Grad-Cos
    rankings; with the time of each pass."""
    from benchmarks.common import spearman_rows

    hooks = HookGradients(model, select_parameters(model))
    project = projector(hooks, dataset, device, projection_dim, "factored")
    images, labels, _ = next(iter(batches(dataset, torch.arange(1050), 1050)))
    images, labels = images.to(device), labels.to(device)
    features, times = {}, {}
    for kind in ("float32", precision):
        with timer(times, kind):
            features[kind] = Featurizer(hooks, project, 256, precision=kind)(images, labels).float().cpu()
    full, half = features["float32"], features[precision]
    rho = spearman_rows(half[:50] @ half[50:].T, full[:50] @ full[50:].T)
    return {f"{precision}_feature_cosine_min": round(float((full * half).sum(1).min()), 4),
            f"{precision}_spearman_vs_float32_median": round(float(np.median(rho)), 4),
            f"{precision}_time_over_float32": round(times[precision] / times["float32"], 2)}


def profile_one_batch(model, dataset, device, batch_size: int, projection_dim: int) -> str:
    """torch.profiler tables (self CPU time by operator) of one plain fwd+bwd batch and of one
    batch through the hooks featurizer: written to benchmarks/results/featurize_profile.txt."""
    from torch.profiler import ProfilerActivity, profile

    names = select_parameters(model)
    hooks = HookGradients(model, names)
    featurizer = Featurizer(hooks, projector(hooks, dataset, device, projection_dim, "factored"), batch_size)
    images, labels, _ = next(iter(batches(dataset, batch_size=batch_size)))
    images, labels = images.to(device), labels.to(device)
    sections = []
    for name, step in (("plain forward+backward", lambda: F.cross_entropy(model(images), labels).backward()),
                       ("hooks featurizer (per-example gradients + projection)",
                        lambda: featurizer(images, labels))):
        step()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
        sections.append(f"## {name}: one batch of {batch_size}, 5 repeats\n{table}")
    return "\n\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--projection-dim", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile one batch instead of timing epochs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, dataset = trained_small_cnn(args.n_train)
    model = model.to(device).eval()
    if args.profile:
        text = profile_one_batch(model, dataset, device, args.batch_size, args.projection_dim)
        path = RESULTS / "featurize_profile.txt"
        path.write_text(text + "\n")
        print(text)
        print(f"written {path}")
        return
    times: dict[str, float] = {}
    plain_epoch(model, dataset, device, args.batch_size)  # warm-up
    for repeat in range(args.repeats):  # interleaved, min of each: robust to a busy machine
        with timer(times, f"plain_{repeat}"):
            plain_epoch(model, dataset, device, args.batch_size)
        with timer(times, f"factored_{repeat}"):
            run_featurize(model, dataset, device, HookGradients, args.projection_dim, args.batch_size, args.batch_size,
                          "factored")
        with timer(times, f"sparse_{repeat}"):
            run_featurize(model, dataset, device, HookGradients, args.projection_dim, args.batch_size, args.batch_size,
                          "sparse")
        with timer(times, f"vmap_{repeat}"):
            run_featurize(model, dataset, device, FuncGradients, args.projection_dim, args.batch_size, 64, "sparse")
    plain, factored, sparse, vmap_s = (min(v for k, v in times.items() if k.startswith(p))
                                       for p in ("plain", "factored", "sparse", "vmap"))
    result = {
        "featurize_over_fwd_bwd_epoch": round(factored / plain, 3),
        "sparse_over_fwd_bwd_epoch": round(sparse / plain, 3),
        "vmap_over_fwd_bwd_epoch": round(vmap_s / plain, 3),
        "fwd_bwd_epoch_s": round(plain, 3),
        "featurize_s": round(factored, 3),
        "sparse_featurize_s": round(sparse, 3),
        "vmap_featurize_s": round(vmap_s, 3),
        "projection": "factored (hooks); sparse: the previous default, hooks; vmap: torch.func + sparse",
        "n_train": len(dataset),
        "n_params": sum(p.numel() for p in model.parameters()),
        "projection_dim": args.projection_dim,
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        **half_precision_agreement(model, dataset, device, args.projection_dim),
        **environment(device),
    }
    path = write_json("featurize.json", result)
    for key, value in result.items():
        print(f"{key:32s} {value}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
