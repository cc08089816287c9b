"""Grad-Cos over ALL layers of a stock torchvision ResNet-18 (11.2M parameters, 32×32 inputs):
our featurization vs TRAK (its CPU projector) and dattri TracIn, at the same projection dimension.

    python -m benchmarks.tda_vs_peers --model resnet18 [--n-train 5000] [--n-test 500]
        [--exact-train 500] [--exact-test 50] [--peer-images 32] [--threads 2]

The model is trained one epoch on real Fashion-MNIST (zero-padded to 32×32, 3 channels). Each
tool runs in its own fresh process. Ours runs through the audit engine as a user gets it: cold
(featurize the training set, score every test example), the default projection at
`projection_dim` 4,096. The plain epoch (one batched forward+backward over the same training
images) is the physical bound. Agreement: exact Grad-Cos (unprojected 11.2M-dimensional
gradients, float64 dot products) of the first `--exact-test` test images with the first
`--exact-train` training images; per test image, Spearman ρ over those training images and the
overlap of the top-10; the median over test images.

TRAK and dattri materialise every example's 11.2M-dimensional gradient and multiply it by a
dense 11.2M × 4,096 matrix that their CPU projector regenerates for every batch (46 billion
random numbers): minutes per batch, hours for the full sets. So each is timed once, on
`--peer-images` training images and a quarter as many test images in batches of 32, and its
time on the full sets is extrapolated per batch, stated as such in the results.
Writes benchmarks/results/peers.json key `tda_resnet18_all_layers`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import RESULTS, environment, in_fresh_process, peak_memory_mb, spearman_rows, top_overlap

KEY = "tda_resnet18_all_layers"
PEER_BATCH = 32
PROJECTION_DIM = 4096
TOP = 10


def fashion32(split: str = "train", n: int | None = None):
    """Fashion-MNIST zero-padded to 32×32, served with 3 channels (a factory the audit YAML names)."""
    from auditor.data import ImageTensorDataset, fashion_mnist

    raw = fashion_mnist(split)
    images, targets = raw.images[:n], raw.targets[:n]
    return ImageTensorDataset(F.pad(images, (2, 2, 2, 2)), targets, raw.classes, channels=3)


def resnet18() -> nn.Module:
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=10)


def audit_yaml(work: Path, n_train: int, n_test: int, projection: str | None = None) -> Path:
    path = work / f"audit_{projection}.yaml"
    path.write_text(textwrap.dedent(f"""
        audit: resnet18-all-layers
        model: {{factory: benchmarks.tda_all_layers:resnet18, checkpoint: {work / 'model.pt'}}}
        data:
          train: {{factory: benchmarks.tda_all_layers:fashion32, kwargs: {{split: train, n: {n_train}}}}}
          test: {{factory: benchmarks.tda_all_layers:fashion32, kwargs: {{split: test, n: {n_test}}}}}
        settings:
          device: cpu
          cache_dir: cache_{projection}
          attribution: {{test_label: true, projection_dim: {PROJECTION_DIM}, top_k: {TOP}}}
        """))
    if projection:  # a non-default projection, for comparison
        path.write_text(path.read_text().replace("top_k:", f"projection: {projection}, top_k:"))
    return path


def tensors(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = fashion32(split, n)
    return dataset.batch(torch.arange(len(dataset)))


def load_model(work: Path) -> nn.Module:
    model = resnet18()
    model.load_state_dict(torch.load(work / "model.pt", weights_only=True))
    return model.eval()


# --- workers: each in its own process; each returns a dict saved with torch.save ---

def worker_epoch(work: Path, args) -> dict:
    """One plain batched forward+backward epoch over the training images (the bound)."""
    model, (x, y) = load_model(work), tensors("train", args.n_train)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for i in range(0, len(x), 256):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[i:i + 256]), y[i:i + 256]).backward()
        best = min(best, time.perf_counter() - start)
    return {"seconds": best}


def worker_ours(work: Path, args) -> dict:
    from auditor.engine import Engine
    from auditor.spec import load_spec
    from auditor.target import load_target

    os.chdir(work)
    engine = Engine(load_target(load_spec(audit_yaml(work, args.n_train, args.n_test, args.projection))))
    indices = torch.arange(args.n_test)
    engine.predictions
    start = time.perf_counter()
    engine.influence(indices)
    seconds, peak = time.perf_counter() - start, peak_memory_mb(torch.device("cpu"))
    tests = engine.index.test_features(torch.arange(args.exact_test))          # not timed: agreement only
    scores = tests @ engine.index.store.matrix()[:args.exact_train].T
    return {"seconds": seconds, "peak_mb": peak, "scores": scores,
            "projection": engine.index.featurizer.projector.__class__.__name__,
            "chunk": engine.index.featurizer.chunk_size}


def worker_exact(work: Path, args) -> dict:
    """Exact Grad-Cos from unprojected per-example gradients (hooks; float64 dot products)."""
    from auditor.attribution.gradients import HookGradients, select_parameters

    model = load_model(work)
    hooks = HookGradients(model, select_parameters(model))
    xt, yt = tensors("test", args.exact_test)
    x, y = tensors("train", args.exact_train)
    tests = torch.cat([F.normalize(hooks.flat(xt[i:i + 8], yt[i:i + 8]), dim=1) for i in range(0, len(xt), 8)])
    scores = torch.cat([tests.double() @ F.normalize(hooks.flat(x[i:i + 8], y[i:i + 8]), dim=1).double().T
                        for i in range(0, len(x), 8)], dim=1)
    return {"scores": scores.float()}


def worker_trak(work: Path, args) -> dict:
    from trak import TRAKer

    model, (x, y), (xt, yt) = load_model(work), tensors("train", args.peer_train), tensors("test", args.peer_test)
    start = time.perf_counter()
    traker = TRAKer(model=model, task="image_classification", train_set_size=len(x),
                    save_dir=str(work / f"trak-{len(x)}"), device="cpu", proj_dim=PROJECTION_DIM,
                    use_half_precision=False)
    traker.load_checkpoint(model.state_dict(), model_id=0)
    for i in range(0, len(x), PEER_BATCH):
        traker.featurize(batch=(x[i:i + PEER_BATCH], y[i:i + PEER_BATCH]), num_samples=len(x[i:i + PEER_BATCH]))
    traker.finalize_features()
    traker.start_scoring_checkpoint(exp_name="bench", checkpoint=model.state_dict(), model_id=0, num_targets=len(xt))
    for i in range(0, len(xt), PEER_BATCH):
        traker.score(batch=(xt[i:i + PEER_BATCH], yt[i:i + PEER_BATCH]), num_samples=len(xt[i:i + PEER_BATCH]))
    traker.finalize_scores(exp_name="bench")
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb(torch.device("cpu"))}


def worker_dattri(work: Path, args) -> dict:
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    model, (x, y), (xt, yt) = load_model(work), tensors("train", args.peer_train), tensors("test", args.peer_test)

    def loss(params, example):
        image, label = example
        logits = torch.func.functional_call(model, params, (image.unsqueeze(0),))
        return F.cross_entropy(logits, label.long().unsqueeze(0))

    loader = lambda a, b: torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b), batch_size=PEER_BATCH)  # noqa: E731
    start = time.perf_counter()
    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = TracInAttributor(task, weight_list=torch.ones(1), normalized_grad=True, device="cpu",
                                  projector_kwargs={"proj_dim": PROJECTION_DIM, "device": "cpu"})
    attributor.attribute(loader(x, y), loader(xt, yt))
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb(torch.device("cpu"))}


WORKERS = {"epoch": worker_epoch, "ours": worker_ours, "exact": worker_exact, "trak": worker_trak,
           "dattri": worker_dattri}


def run_worker(tool: str, work: Path, args, **extra) -> dict:
    out = work / f"{tool}-{extra.get('peer_train', '')}.pt"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**vars(args), **extra}.items()
             if k in ("n_train", "n_test", "exact_train", "exact_test", "threads", "peer_train", "peer_test", "projection")
             and v is not None]
    result = in_fresh_process("benchmarks.tda_all_layers", ["--worker", tool, "--work", str(work), *flags], out)
    print(f"  {tool:8s} {extra or ''} {result.get('seconds', 0):8.1f} s  peak {result.get('peak_mb', 0):.0f} MB", flush=True)
    return result


def batches_of(images: int) -> int:
    return -(-images // PEER_BATCH)


def extrapolated(timed_s: float, train: int, test: int, n_train: int, n_test: int) -> dict:
    """The peer's time on the full sets from one timed run, per batch of `PEER_BATCH`: its CPU
    projector regenerates the dense P × d matrix for every batch, which dominates a batch's cost."""
    per_batch = timed_s / (batches_of(train) + batches_of(test))
    return {"timed": {"train": train, "test": test, "seconds": round(timed_s, 1)},
            "seconds_per_batch": round(per_batch, 1), "batch": PEER_BATCH,
            "seconds": round(per_batch * (batches_of(n_train) + batches_of(n_test)))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--exact-train", type=int, default=500)
    parser.add_argument("--exact-test", type=int, default=50)
    parser.add_argument("--peer-images", type=int, default=32, help="training images the peers are timed on "
                        "(and a quarter as many test images)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", nargs="*", default=[], choices=["trak", "dattri"])
    parser.add_argument("--projection", default=None, help="a projection other than the default (for comparison)")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--peer-train", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--peer-test", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        torch.save(WORKERS[args.worker](args.work, args), args.out)
        return
    with tempfile.TemporaryDirectory(prefix="tda-all-layers-") as work:
        report(args, measure(args, Path(work)))


def measure(args, work: Path) -> dict:
    from sample_audits.train import train

    torch.manual_seed(0)
    model = train(resnet18(), fashion32("train", args.n_train), epochs=1, seed=0)
    torch.save(model.state_dict(), work / "model.pt")
    r = {"epoch": run_worker("epoch", work, args), "ours": run_worker("ours", work, args),
         "exact": run_worker("exact", work, args)}
    for tool in ("trak", "dattri"):
        if tool not in args.skip:
            r[tool] = run_worker(tool, work, args, peer_train=args.peer_images, peer_test=max(1, args.peer_images // 4))
    return r


def report(args, r: dict) -> None:
    ours, exact = r["ours"], r["exact"]["scores"]
    rho = spearman_rows(ours["scores"], exact)
    overlap = top_overlap(ours["scores"].topk(TOP, dim=1).indices, exact)
    document = {"model": "torchvision resnet18 (all layers, 11.2M parameters)", "input": "3×32×32",
                "n_train": args.n_train, "n_test": args.n_test, "projection_dim": PROJECTION_DIM,
                "projection": ours["projection"], **environment(torch.device("cpu")),
                "featurize_s": round(ours["seconds"], 2), "fwd_bwd_epoch_s": round(r["epoch"]["seconds"], 2),
                "featurize_over_fwd_bwd_epoch": round(ours["seconds"] / r["epoch"]["seconds"], 2),
                "spearman_vs_exact_median": round(float(np.median(rho)), 4),
                "spearman_vs_exact_min": round(float(rho.min()), 4),
                "top10_overlap_vs_exact": round(overlap, 3),
                "exact_subset": {"train": args.exact_train, "test": args.exact_test},
                "peak_rss_mb": round(ours["peak_mb"]),
                "note": "ours: featurize the training and test images and score them (cold, one process); "
                        "peers: timed on a subset, extrapolated per batch (their CPU projector regenerates the "
                        "dense 11.2M x 4,096 matrix for every batch, which dominates)"}
    for tool in ("trak", "dattri"):
        if tool in r:
            fit = extrapolated(r[tool]["seconds"], args.peer_images, max(1, args.peer_images // 4), args.n_train,
                               args.n_test)
            document[tool] = {**fit, "peak_mb": round(r[tool]["peak_mb"])}
            document[f"speedup_vs_{tool}"] = round(fit["seconds"] / ours["seconds"], 1)
    path = RESULTS / "peers.json"
    peers = json.loads(path.read_text()) if path.is_file() else {}
    peers[KEY] = document
    path.write_text(json.dumps(peers, indent=2) + "\n")
    print(json.dumps(document, indent=1))
    print(f"written {path} [{KEY}]")


if __name__ == "__main__":
    main()
