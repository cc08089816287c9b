"""Helpers shared by the benchmark scripts: a trained sample model, timing, memory, results files."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def trained_small_cnn(n_train: int = 10000, epochs: int = 1, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """The sample audits' CNN trained briefly on real Fashion-MNIST; returns (model, train set)."""
    return trained_model("small_cnn", n_train, epochs, seed)


def trained_model(factory: str, n_train: int = 10000, epochs: int = 1, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """`sample_audits.models.<factory>()` trained briefly on real Fashion-MNIST; returns (model, train set)."""
    from sample_audits import models
    from sample_audits.train import train, training_set

    torch.manual_seed(seed)
    dataset = training_set({"n_train": n_train})
    return train(getattr(models, factory)(), dataset, epochs=epochs, seed=seed), dataset


@contextmanager
def timer(into: dict, key: str):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    into[key] = time.perf_counter() - start


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_fresh_process(module: str, arguments: list[str], out: Path) -> dict:
    """Run `python -m module ARGUMENTS --out OUT` in a fresh process (cold imports, its own peak
    memory, progress bars off) and load what it saved at `out`: the one way a benchmark runs a
    tool apart from the others."""
    subprocess.run([sys.executable, "-m", module, *arguments, "--out", str(out)], check=True,
                   env={**os.environ, "TQDM_DISABLE": "1"})
    return torch.load(out, weights_only=False)


def kronfluence_task():
    """Kronfluence's task for a classifier, as its examples write it: summed cross-entropy as the
    training loss (labels sampled from the model for the Fisher) and as the measurement."""
    import torch.nn.functional as F
    from kronfluence.task import Task

    class Classification(Task):
        def compute_train_loss(self, batch, model, sample=False):
            x, y = batch
            logits = model(x)
            if sample:
                with torch.no_grad():
                    y = torch.multinomial(F.softmax(logits.detach(), -1), 1).flatten()
            return F.cross_entropy(logits, y, reduction="sum")

        def compute_measurement(self, batch, model):
            return F.cross_entropy(model(batch[0]), batch[1], reduction="sum")

    return Classification()


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": f"{device.type} ({name})", "torch": torch.__version__, "threads": torch.get_num_threads()}


def write_json(name: str, document: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def saliency_arguments(doc: str, n_images: int = 256):
    """The options shared by the saliency benchmarks, parsed."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=n_images)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def model_and_test_images(args) -> tuple[torch.nn.Module, torch.Tensor, torch.device]:
    """The trained sample CNN in eval mode and `args.n_images` real test images, on `args.device`."""
    from auditor.target import resolve_device
    from sample_audits.fashion import test_set

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model, _ = trained_small_cnn(10000)
    images = test_set(recipe={"n_test": args.n_images}).batch(torch.arange(args.n_images))[0].to(device)
    return model.to(device).eval(), images, device


def timed_call(fn, device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds `fn()` takes (CUDA synchronised on both sides) and its detached result."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out.detach()


# --- audits of the sample CNN (or a ResNet head) on Fashion-MNIST, and score agreement: what the
# peer comparisons (tda_vs_peers, tda_all_layers, featurize, scaling) share ---

TOP_K = 10
#: model name → (factory in sample_audits.models, `layers:` whose gradients every tool uses)
MODELS = {"small_cnn": ("small_cnn", None), "resnet18_head": ("resnet18_28", ["fc"])}


def audit_yaml(work: Path, n_train: int, n_test: int, cache: str, projection_dim: int = 1000000,
               model: str = "small_cnn") -> Path:
    factory, layers = MODELS[model]
    path = work / f"audit_{cache}.yaml"
    path.write_text(textwrap.dedent(f"""
        audit: peers
        model: {{factory: sample_audits.models:{factory}, checkpoint: {work / 'model.pt'}}}
        data:
          train: {{fashion_mnist: {{split: train, channels: 3}}, limit: {n_train}}}
          test: {{fashion_mnist: {{split: test, channels: 3}}, limit: {n_test}}}
        settings:
          device: cpu
          cache_dir: {cache}
          attribution: {{test_label: true, projection_dim: {projection_dim}, top_k: {TOP_K}, layers: {layers}}}
        """).replace("layers: None", "layers: null"))
    return path


def load(audit: Path):
    from auditor.engine import Engine
    from auditor.spec import load_spec
    from auditor.target import load_target

    return Engine(load_target(load_spec(audit)))


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman ρ of each row of `a` with the same row of `b` (ranks, then Pearson)."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a.double().numpy(), axis=1), rankdata(b.double().numpy(), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))


def top_overlap(top: torch.Tensor, scores: torch.Tensor) -> float:
    """Mean share of our top-k that is also in the peer's top-k."""
    theirs = scores.topk(top.shape[1], dim=1).indices
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / top.shape[1] for a, b in zip(top, theirs)]))


def strongest_score(neighbours, labels: torch.Tensor, losses: torch.Tensor) -> np.ndarray:
    """The rule's order (`strongest_first`) of one vote as a score: higher = more suspect."""
    from auditor.checks.mislabel_suspects import strongest_first

    order = strongest_first(neighbours.own_share(labels), neighbours.suggested(labels)[1], losses)
    score = np.empty(len(labels))
    score[order.numpy()] = np.arange(len(labels), 0, -1)
    return score
