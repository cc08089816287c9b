"""Does the shipped shortcuts pack catch a shortcut in a stock torchvision ResNet-18 trained on
the user's own ImageFolder PNGs, and pass the same model trained clean? (issue #17)

For every seed: Fashion-MNIST written as 32×32-ready PNG class folders; a red 4×4 mark at the
top-left corner of 80% of the Shirt training images (none for the clean control) and of 15% of
the test images of every class; `resnet18(num_classes=10)` trained with `Normalize`
(sample_audits/folders.py); then `auditor run` on the YAML a user writes (arch, image_folder,
transform, `include: [{pack: shortcuts}]`, default settings) in a process of its own, timed,
with its peak memory. Carriers are judged by file path against the marked files.

    python -m benchmarks.resnet_shortcut [--seeds 0 1 2] [--n-train 2000] [--n-test 500] [--epochs 6]
                                         [--packs shortcuts label_noise] [--out efficacy_resnet.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from auditor.engine.plan import stated_peak_mb
from benchmarks.common import environment, write_json
from benchmarks.efficacy import recall_precision
from benchmarks.shortcuts_pack import PAIRS, caught, pack_status
from sample_audits.folders import build


# `python -m auditor ARGS` that reports its own peak resident memory on exit (Linux: kB).
MEASURED = ("import resource, runpy, sys\nsys.argv = ['auditor', *sys.argv[1:]]\ntry:\n"
            "    runpy.run_module('auditor', run_name='__main__')\nfinally:\n"
            "    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


def audit(path: Path, packs: list[str]) -> dict:
    """Run the audit file `path` with `packs` in a child process: verdicts, seconds, peak RSS and
    the peak its memory plan stated before the rules ran."""
    folder = path.parent
    text = path.read_text().replace("include: [{pack: shortcuts}]",
                                    "include: [" + ", ".join(f"{{pack: {p}}}" for p in packs) + "]")
    path.write_text(text)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, "run", str(path), "--report", str(folder / "report")],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stdout + done.stderr)
    peak_kb = int(done.stderr.rsplit("PEAK_RSS_KB ", 1)[1].split()[0])
    rules = {r["name"]: r for r in json.loads((folder / "report" / "results.json").read_text())["rules"]}
    return {"rules": rules, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024),
            "stated_peak_mb": stated_peak_mb(done.stderr)}


def measure(folder: Path, rules: dict, pairs: list[tuple[str, str]] | None = None) -> dict:
    """The shortcuts pack's verdict on a folder: its test side fails when any pair's does (`pairs`:
    the (test side, carriers) rule names judged, by default every pair the pack ships), carriers
    are the union of the pairs' lists, judged by file path against the marked files; `caught` when a
    failing test side flagged a spot on the marked class (`shortcuts_pack.caught`)."""
    pairs = [pair for pair in (pairs or PAIRS.values()) if pair[0] in rules]
    manifest = json.loads((folder / "manifest.json").read_text())
    found = {f["path"] for _, carriers in pairs for f in rules[carriers]["failures"]}
    recall, precision = recall_precision(found, set(manifest["marked_train"]))
    sides = [rules[test_side] for test_side, _ in pairs]
    marked = manifest["recipe"]["square"]["class"]
    spot = [h for h in sides[0]["extra"]["hotspots"] if h["predicted"] == marked]
    return {"shortcut_status": pack_status([side["status"] for side in sides]),
            "caught": any(caught(side["status"], side["extra"].get("hotspots", []), marked) for side in sides),
            "excess": max((side["value"] for side in sides if side["value"] is not None), default=None),
            "shirt_hotspot": spot[0] if spot else None, "carriers_found": len(found),
            "carrier_recall": recall, "carrier_precision": precision,
            "statuses": {name: r["status"] for name, r in rules.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--packs", nargs="+", default=["shortcuts"])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", default="efficacy_resnet.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="auditor-resnet-"))
    runs = []
    for seed in args.seeds:
        for clean in (False, True):
            folder = work / f"seed{seed}-{'clean' if clean else 'marked'}"
            start = time.perf_counter()
            build(folder, clean, args.n_train, args.n_test, args.epochs, seed)
            trained = time.perf_counter() - start
            result = audit(folder / "audit_resnet.yaml", args.packs)
            row = {"seed": seed, "clean": clean, "train_seconds": round(trained, 1),
                   "audit_seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
                   **measure(folder, result["rules"])}
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "shirt_hotspot"}), flush=True)
    marked = [r for r in runs if not r["clean"]]
    clean = [r for r in runs if r["clean"]]
    summary = {
        "shortcut_caught_rate": float(np.mean([r["caught"] for r in marked])),
        "clean_false_alarm_rate": float(np.mean([any(s == "failed" for s in r["statuses"].values()) for r in clean])),
        "excess_marked_min": min(r["excess"] for r in marked), "excess_clean_max": max(r["excess"] for r in clean),
        "carrier_recall": float(np.mean([r["carrier_recall"] for r in marked])),
        "carrier_precision": (float(np.mean(found)) if (found := [r["carrier_precision"] for r in marked
                                                                   if r["carrier_precision"] is not None]) else None),
        "audit_seconds_max": max(r["audit_seconds"] for r in runs),
        "peak_rss_mb_max": max((r["peak_rss_mb"] or 0) for r in runs),
    }
    summary["margin"] = summary["excess_marked_min"] - summary["excess_clean_max"]
    document = {"command": "python -m benchmarks.resnet_shortcut " + " ".join(sys.argv[1:]),
                "environment": environment(torch.device("cpu")), "packs": args.packs,
                "n_train": args.n_train, "n_test": args.n_test, "epochs": args.epochs,
                "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    print(write_json(args.out, document))


if __name__ == "__main__":
    main()
