"""Helpers shared by the benchmark scripts: a trained sample model, timing, memory, results files."""

from __future__ import annotations

import json
import platform
import resource
import time
from contextlib import contextmanager
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def trained_small_cnn(n_train: int = 10000, epochs: int = 1, seed: int = 0) -> tuple[torch.nn.Module, object]:
    """The sample audits' CNN trained briefly on real Fashion-MNIST; returns (model, train set)."""
    from sample_audits.models import small_cnn
    from sample_audits.train import train, training_set

    torch.manual_seed(seed)
    dataset = training_set({"n_train": n_train})
    return train(small_cnn(), dataset, epochs=epochs, seed=seed), dataset


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


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": f"{device.type} ({name})", "torch": torch.__version__, "threads": torch.get_num_threads()}


def write_json(name: str, document: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
