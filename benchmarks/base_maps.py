"""Which base map localises, per architecture (issue #25, item 6): the shortcuts pack's verdicts
with VAR over each saliency method, on models already trained by two other benchmarks.

- `--eff-work DIR --n-train N`: the efficacy benchmark's part-A sample CNNs (3 seeds × 2 square
  variants × {defective, clean}, `benchmarks/efficacy.py`'s recipes and checkpoints in DIR);
- `--arch-work DIR`: every folder `benchmarks/architectures.py` left in DIR (its `audit.yaml`,
  audited again in a process of its own, carriers judged by file path); reliance from
  `--reliance FILE` (that benchmark's results).
Each model is audited once per `--methods` entry, the pack overridden only in `method:` on both
shortcut rules. Per run: status of `no-patch-shortcut`, flagged hotspots (class and window) and,
for the folders, carrier recall and precision.

    python -m benchmarks.base_maps --methods gradient input_x_gradient --eff-work /tmp/eff --n-train 20000
    python -m benchmarks.base_maps --methods gradient input_x_gradient --arch-work /tmp/arch \\
        --reliance benchmarks/results/architectures_cpu.json --out base_maps_architectures.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.carriers import method_override
from benchmarks.common import environment, write_json


def sample_cnn_runs(method: str, work: Path, n_train: int) -> list[dict]:
    from benchmarks.efficacy import VARIANTS, recipe, run_audit

    runs = []
    for seed in (0, 1, 2):
        for name, square in VARIANTS.items():
            for defective in (True, False):
                session, _ = run_audit(recipe(seed, n_train, 5000, square, defective), work,
                                       packs=[{"pack": "shortcuts", "override": method_override(method)}])
                outcome = session.outcomes["no-patch-shortcut"]
                spots = outcome.result.extra.get("hotspots", []) if outcome.result else []
                runs.append({"model": f"sample_cnn-{n_train}-{name}-s{seed}", "clean": not defective,
                             "planted_class": square["class"], "status": outcome.status,
                             "flagged": [[h["predicted"], h["window"]] for h in spots if h.get("flagged")]})
                print(runs[-1], flush=True)
    return runs


def folder_runs(method: str, work: Path, reliance: dict) -> list[dict]:
    from benchmarks.resnet_shortcut import audit, measure

    runs = []
    for folder in sorted(p for p in work.iterdir() if (p / "audit.yaml").is_file()):
        text = (folder / "audit.yaml").read_text()
        path = folder / f"audit-{method}.yaml"
        path.write_text(text.replace("include: [{pack: shortcuts}]",
                                     "include: [" + json.dumps({"pack": "shortcuts", "override": method_override(method)}) + "]"))
        result = audit(path, ["shortcuts"])
        judged = measure(folder, result["rules"])
        spots = result["rules"]["no-patch-shortcut"].get("extra", {}).get("hotspots", [])
        runs.append({"model": folder.name, "clean": folder.name.endswith("-clean"), "reliance": reliance.get(folder.name),
                     "status": judged["statuses"]["no-patch-shortcut"],
                     "flagged": [[h["predicted"], h["window"]] for h in spots if h.get("flagged")],
                     "carrier_recall": judged["carrier_recall"], "carrier_precision": judged["carrier_precision"]})
        print(runs[-1], flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["gradient", "input_x_gradient"])
    parser.add_argument("--eff-work", type=Path, default=None)
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--arch-work", type=Path, default=None)
    parser.add_argument("--reliance", type=Path, default=None, help="architectures.py's results (reliance per run)")
    parser.add_argument("--out", default="base_maps.json")
    args = parser.parse_args()
    reliance = {}
    if args.reliance:
        for r in json.loads(args.reliance.read_text())["runs"]:
            reliance[f"{r['arch']}-{r['mark']}-s{r['seed']}-{'clean' if r['clean'] else 'marked'}"] = \
                r.get("reliance_over_control")
    document = {"methods": {}, "environment": environment(torch.device("cpu")),
                "command": "python -m benchmarks.base_maps " + " ".join(sys.argv[1:])}
    for method in args.methods:
        runs = []
        if args.eff_work:
            runs += sample_cnn_runs(method, args.eff_work, args.n_train)
        if args.arch_work:
            runs += folder_runs(method, args.arch_work, reliance)
        document["methods"][method] = runs
    print(write_json(args.out, document))


if __name__ == "__main__":
    main()
