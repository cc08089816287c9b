"""Fault tolerance and determinism: kill-and-resume, out-of-memory retry, identical results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from auditor.attribution.features import Featurizer
from auditor.attribution.gradients import make_gradient_computer, select_parameters
from auditor.attribution.projection import make_projector
from auditor.cli import main
from auditor.errors import AttributionError, MemoryWarning
from conftest import needs_fashion, write
from fakes import linear

TESTS = Path(__file__).resolve().parent


def featurize_command(audit: Path) -> list[str]:
    return [sys.executable, "-m", "auditor", "featurize", str(audit), "--no-progress"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def shards(cache: Path) -> list[Path]:
    return sorted(cache.glob("features/*/shard-*.npy"))


def slow_audit(tmp_path: Path, cache: str) -> Path:
    return write(tmp_path / f"audit_{cache}.yaml", f"""
audit: slow
model: {{factory: fakes:linear}}
data:
  train: {{factory: fakes:slow_images, kwargs: {{n: 96, delay: 0.02}}}}
  test: {{factory: fakes:images}}
settings: {{device: cpu, cache_dir: {cache}, attribution: {{shard_size: 8, projection_dim: 32}}}}
""")


def test_killed_featurization_resumes_from_its_shards(tmp_path):
    interrupted = slow_audit(tmp_path, "cache_a")
    process = subprocess.Popen(featurize_command(interrupted), env=environment(), cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(shards(tmp_path / "cache_a")) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    done = len(shards(tmp_path / "cache_a"))
    assert 3 <= done < 12, f"kill landed after {done} of 12 shards"

    resumed = subprocess.run(featurize_command(interrupted), env=environment(), cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"12 shards, {done} already cached, {12 - done} computed" in resumed.stdout

    fresh = subprocess.run(featurize_command(slow_audit(tmp_path, "cache_b")), env=environment(), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr
    a, b = shards(tmp_path / "cache_a"), shards(tmp_path / "cache_b")
    assert [p.relative_to(tmp_path / "cache_a") for p in a] == [p.relative_to(tmp_path / "cache_b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


class OutOfMemoryAbove:
    """A gradient computer that runs out of memory on chunks larger than `limit` examples."""

    def __init__(self, inner, limit: int, error: Exception) -> None:
        self.inner, self.limit, self.error, self.sizes = inner, limit, error, []

    def per_parameter(self, x, y):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise self.error
        return self.inner.per_parameter(x, y)


def featurizer(limit: int, error: Exception, chunk_size: int = 32) -> tuple[Featurizer, OutOfMemoryAbove]:
    torch.manual_seed(0)
    model = linear()
    computer = make_gradient_computer(model, select_parameters(model, None), "func")
    flaky = OutOfMemoryAbove(computer, limit, error)
    return Featurizer(flaky, make_projector(computer.dim, 16, "sparse", 0), chunk_size), flaky


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
], ids=["cuda", "cpu"])
def test_out_of_memory_halves_the_chunk_and_retries(error):
    images, labels = torch.rand(40, 1, 8, 8), torch.arange(40) % 3
    reference, _ = featurizer(limit=1000, error=error)
    flaky, computer = featurizer(limit=10, error=error)
    with pytest.warns(MemoryWarning) as record:
        features = flaky(images, labels)
    assert [str(w.message).split("retrying with ")[1].split()[0] for w in record] == ["chunk_size=16", "chunk_size=8"]
    assert computer.sizes == [32, 16, 8, 8, 8, 8, 8] and flaky.chunk_size == 8
    torch.testing.assert_close(features, reference(images, labels))


def test_out_of_memory_on_one_example_is_a_clear_error():
    flaky, _ = featurizer(limit=0, error=torch.cuda.OutOfMemoryError("CUDA out of memory"), chunk_size=1)
    with pytest.raises(AttributionError, match=r"out of memory computing the gradient of a single example.*\n"
                                               r"  fix: restrict `layers:` to fewer modules"):
        flaky(torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))


def test_other_errors_are_not_retried():
    flaky, computer = featurizer(limit=0, error=RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        flaky(torch.rand(4, 1, 8, 8), torch.arange(4) % 3)
    assert computer.sizes == [4]


@needs_fashion
def test_two_runs_give_identical_results_json(fashion_audit, tmp_path):
    path = fashion_audit("""
include: [{pack: shortcuts}, {pack: label_noise}, {pack: localization}]
rules:
  - {name: accurate, check: accuracy, min_accuracy: 0.5}
  - {name: agreement, check: proponent_label_agreement, on: {sample: 40}, min_agreement: 0.5}
  - {name: tfa-window, check: saliency_concentration, source: tfa, on: {indices: [3, 8]}, k: 2, max_mass: 0.9}
""", test_limit=200)
    documents = []
    for run in ("first", "second"):
        shutil.rmtree(tmp_path / "cache", ignore_errors=True)
        main(["run", str(path), "--report", str(tmp_path / run), "--max-panels", "0"])
        document = json.loads((tmp_path / run / "results.json").read_text())
        assert document.pop("created") and document.pop("seconds") >= 0       # only the times may differ
        for rule in document["rules"]:
            assert rule.pop("seconds") >= 0
        documents.append(json.dumps(document, indent=1))
    assert documents[0] == documents[1]
    rules = json.loads(documents[0])["rules"]
    assert len(rules) == 10 and any(r["n_failures"] for r in rules)
