"""Featurization and scoring time and peak memory vs training-set size; TFA time per pair.

    python -m benchmarks.scaling [--sizes 1000 5000 20000 60000] [--n-test 500] [--threads 2]

Each size runs in a fresh process through the audit engine (default projection to 4,096
dimensions, sample audits' CNN, real Fashion-MNIST): featurize the training set (cold cache),
score `--n-test` test images against it (top-k proponents and opponents), then TFA maps of
the top-3 proponents of 20 test images. Peak memory is the process's resident peak minus its
resident size before featurization (the data and torch themselves are not counted).
Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import audit_yaml, environment, load, trained_small_cnn, write_json


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(audit: Path, n_test: int) -> dict:
    engine = load(audit)
    engine.predictions
    before = rss_mb()
    start = time.perf_counter()
    store = engine.index.store
    featurize_s = time.perf_counter() - start
    indices = torch.arange(n_test)
    start = time.perf_counter()
    engine.influence(indices)
    score_s = time.perf_counter() - start
    tfa_indices = indices[:20]
    start = time.perf_counter()
    engine.tfa(tfa_indices, 3)
    tfa_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"n_train": store.n, "featurize_s": featurize_s, "score_s": score_s,
            "featurize_us_per_image": 1e6 * featurize_s / store.n,
            "score_ns_per_pair": 1e9 * score_s / (store.n * n_test),
            "tfa_ms_per_pair": 1e3 * tfa_s / (len(tfa_indices) * 3), "peak_extra_mb": peak - before}


def run_size(work: Path, n: int, args: argparse.Namespace) -> dict:
    """One training-set size in a fresh process: its row of the table."""
    audit = audit_yaml(work, n, args.n_test, f"cache_{n}", projection_dim=4096)
    out = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "--worker", str(audit),
                          "--n-test", str(args.n_test), "--threads", str(args.threads)],
                         check=True, capture_output=True, text=True).stdout
    row = json.loads(out.split("RESULT ", 1)[1])
    print(f"{n:6d} train: featurize {row['featurize_s']:.2f} s ({row['featurize_us_per_image']:.0f} µs/img), "
          f"score {row['score_s']:.2f} s ({row['score_ns_per_pair']:.2f} ns/pair), "
          f"TFA {row['tfa_ms_per_pair']:.1f} ms/pair, peak +{row['peak_extra_mb']:.0f} MB", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000, 60000])
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.n_test)))
        return
    model, _ = trained_small_cnn(10000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:  # the caches (1.4 GB for the default sizes)
        work = Path(tmp)
        torch.save(model.state_dict(), work / "model.pt")
        for n in args.sizes:
            rows.append(run_size(work, n, args))
    write_json("scaling.json", {"n_test": args.n_test, "projection_dim": 4096, **environment(torch.device("cpu")),
                                "rows": rows})


if __name__ == "__main__":
    main()
