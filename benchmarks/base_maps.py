"""Which base map localises, per architecture (issue #25, item 6): the shortcuts pack's verdicts
with VAR over each saliency method, on models already trained by two other benchmarks.

- `--eff-work DIR --n-train N`: the efficacy benchmark's part-A sample CNNs (3 seeds × 2 square
  variants × {defective, clean}, `benchmarks/efficacy.py`'s recipes and checkpoints in DIR);
- `--arch-work DIR`: every folder `benchmarks/architectures.py` left in DIR (its `audit.yaml`,
  audited again in a process of its own, carriers judged by file path); reliance from
  `--reliance FILE` (that benchmark's results).
Each model is audited once per `--methods` entry, the pack's gradient pair (`no-patch-shortcut`,
`no-shortcut-carriers`) overridden only in `method:` and judged alone; `pack` is the shipped pack
as it is, judged as a user meets it: failed when any pair's test side fails, carriers the union
of the pairs' lists. A mark counts as caught only where a failing test side flagged a spot on the
marked class (a rule can also fail on maps it cannot read; `failed_without_a_flagged_mark`).
Per run: that status, whether caught, flagged hotspots (class and window), for the folders
carrier recall and precision, audit seconds and peak RSS.

    python -m benchmarks.base_maps --methods gradient input_x_gradient --eff-work /tmp/eff --n-train 20000
    python -m benchmarks.base_maps --methods gradient input_x_gradient --arch-work /tmp/arch \\
        --reliance benchmarks/results/architectures_cpu.json --out base_maps_architectures.json
    python -m benchmarks.base_maps --methods pack --arch-work /tmp/arch \\
        --reliance benchmarks/results/architectures_cpu.json --out shortcuts_pack_architectures.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.architectures import RELIED_ON
from benchmarks.carriers import method_override
from benchmarks.common import environment, write_json
from benchmarks.shortcuts_pack import PAIRS, RULES, caught_by, pack_status

PACK = "pack"           # a `--methods` entry: the shipped pack as it is


def included(method: str) -> dict:
    """The shortcuts pack as shipped (`pack`), or with its gradient pair reading VAR over `method`."""
    return {"pack": "shortcuts"} if method == PACK else {"pack": "shortcuts", "override": method_override(method)}


def sample_cnn_runs(method: str, work: Path, n_train: int) -> list[dict]:
    from benchmarks.efficacy import VARIANTS, recipe, run_audit

    runs = []
    for seed in (0, 1, 2):
        for name, square in VARIANTS.items():
            for defective in (True, False):
                session, _ = run_audit(recipe(seed, n_train, 5000, square, defective), work, packs=[included(method)])
                sides = [session.outcomes[test_side] for test_side, _ in (PAIRS.values() if method == PACK else [RULES])]
                spots = [h for o in sides if o.result for h in o.result.extra.get("hotspots", [])]
                runs.append({"model": f"sample_cnn-{n_train}-{name}-s{seed}", "clean": not defective,
                             "planted_class": square["class"],
                             "status": pack_status([o.status for o in sides]),
                             "caught": any(caught_by(o, square["class"]) for o in sides),
                             "flagged": [[h["predicted"], h["window"]] for h in spots if h.get("flagged")]})
                print(runs[-1], flush=True)
    return runs


def folder_runs(method: str, work: Path, reliance: dict) -> list[dict]:
    from benchmarks.resnet_shortcut import audit, measure

    runs = []
    for folder in sorted(p for p in work.iterdir() if (p / "audit.yaml").is_file()):
        text = (folder / "audit.yaml").read_text()
        path = folder / f"audit-{method}.yaml"
        path.write_text(text.replace("include: [{pack: shortcuts}]", "include: [" + json.dumps(included(method)) + "]"))
        result = audit(path, ["shortcuts"])
        judged = measure(folder, result["rules"], None if method == PACK else [RULES])
        spots = [h for name, rule in result["rules"].items() if rule["check"] == "saliency_concentration"
                 for h in rule.get("extra", {}).get("hotspots", [])]
        runs.append({"model": folder.name, "clean": folder.name.endswith("-clean"), "reliance": reliance.get(folder.name),
                     "status": judged["shortcut_status"], "caught": judged["caught"],
                     "flagged": [[h["predicted"], h["window"]] for h in spots if h.get("flagged")],
                     "carrier_recall": judged["carrier_recall"], "carrier_precision": judged["carrier_precision"],
                     "statuses": judged["statuses"], "audit_seconds": result["seconds"],
                     "peak_rss_mb": result["peak_rss_mb"], "stated_peak_mb": result["stated_peak_mb"]})
        print(runs[-1], flush=True)
    return runs


def summary(runs: list[dict]) -> dict:
    """Caught among the marked models that rely on their mark, and clean false alarms."""
    relied = [r for r in runs if not r["clean"] and (r.get("reliance") or 0) >= RELIED_ON]
    clean = [r for r in runs if r["clean"]]
    out = {"caught": sum(r["caught"] for r in relied), "relied_on": len(relied),
           "failed_without_a_flagged_mark": sum(r["status"] == "failed" and not r["caught"] for r in relied),
           "clean_false_alarms": sum(r["status"] == "failed" for r in clean), "clean": len(clean)}
    found = [r for r in relied if r["caught"] and r.get("carrier_recall") is not None]
    if found:
        precision = [r["carrier_precision"] for r in found if r["carrier_precision"] is not None]
        out["carriers_where_caught"] = [round(sum(r["carrier_recall"] for r in found) / len(found), 3),
                                        round(sum(precision) / len(precision), 3) if precision else None]
    stated = [r for r in runs if r.get("stated_peak_mb")]
    if stated:
        out["peak_rss_within_stated"] = f"{sum(r['peak_rss_mb'] <= r['stated_peak_mb'] for r in stated)} of {len(stated)}"
        out["peak_rss_over_stated_max"] = max(round(r["peak_rss_mb"] / r["stated_peak_mb"], 3) for r in stated)
    if relied and "reliance" in relied[0]:
        out["missed"] = [f"{r['model']} (reliance {r['reliance']:.3f})" for r in relied if not r["caught"]]
    return out


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
    document["summary"] = {method: summary(runs) for method, runs in document["methods"].items()}
    print(json.dumps(document["summary"], indent=1))
    print(write_json(args.out, document))


if __name__ == "__main__":
    main()
