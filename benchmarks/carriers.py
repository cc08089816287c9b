"""Shortcut carriers on real data: does `shortcut_carriers` name the planted training images?

For each training-set size, seed and shortcut variant of `benchmarks/efficacy.py` it trains
the sample CNN with the planted square (defective) and without it (clean), runs the shipped
shortcuts pack (one set of thresholds for every size: a test-side rule and a carriers rule over
each of two base maps, VAR over the gradient and over input x gradient; the pack fails when either
pair does, and names the union of their carriers) and measures, for the pack and for each pair,
whether the test side catches the shortcut and, against the planted list:
- recall and precision of the carriers the rule names (occlusion, robust z-score);
- the same for the obvious baseline in the same run: a training image of the hotspot's class
  is a carrier when the densest window of its own-label gradient map lies at the hotspot;
- the clean model's verdict (a false alarm if it fails) and the rule's wall time.

    python -m benchmarks.carriers [--seeds 0 1 2] [--n-train 5000 20000] [--n-test 5000] [--out carriers.json]
                                  [--method input_x_gradient]     # judge that base map's pair alone
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import environment, write_json
from benchmarks.efficacy import VARIANTS, audit_session, recall_precision, recipe, train_model
from benchmarks.shortcuts_pack import PAIRS, RULES, caught, pack_status


def method_override(method: str) -> dict:
    """The pack override that makes the gradient pair read VAR over `method`."""
    return {rule: {"method": method} for rule in RULES}


def saliency_baseline(engine, spot: dict) -> set[int]:
    """Training images of the hotspot's class whose own-label gradient map peaks at the hotspot."""
    from auditor.checks.windows import densest_window, near

    c = engine.classes.index(spot["class"])
    row, col, side = spot["window"]
    candidates = (engine.train_labels == c).nonzero().flatten()
    found = []
    for start in range(0, len(candidates), 1024):
        chunk = candidates[start:start + 1024]
        images, labels = engine.train_batch(chunk)
        maps = engine.attribute(images, labels, "gradient").abs().sum(1)
        found.append(chunk[near(densest_window(maps, side), row, col, side)])
    return set(torch.cat(found).tolist()) if found else set()


def pair_row(outcomes: dict, pair: tuple[str, str], planted_class: str) -> dict:
    """One base map's verdicts: its test-side rule, its carriers rule, the hotspots and the carriers named."""
    test_side, outcome = (outcomes[name] for name in pair)
    hotspots = test_side.result.extra["hotspots"] if test_side.result else []
    return {"status": outcome.status, "shortcut_status": test_side.status,
            "caught": caught(test_side.status, hotspots, planted_class),
            "value": outcome.result.value if outcome.result else None,
            "shortcut_value": test_side.result.value if test_side.result else None,
            "groups": outcome.result.extra["carriers"] if outcome.result else [],
            "hotspots": [g for g in hotspots if g["flagged"] or "flip_share" in g],
            "found": sorted(f.index for f in outcome.failures)}


def run(rec: dict, work: Path, defective: bool, method: str | None = None) -> dict:
    """The shipped pack on one model: each base map's pair, and the pack's verdict (either pair
    fails; carriers: the union of both lists). `method`: judge that base map's pair alone."""
    from sample_audits.fashion import defects

    session = audit_session(rec, train_model(rec, work), work, include=[{"pack": "shortcuts"}])
    start = time.perf_counter()
    outcomes = {o.rule.name: o for o in session.run_all()}
    seconds = time.perf_counter() - start
    square_class = rec["square"]["class"]
    pairs = {name: pair_row(outcomes, rules, square_class) for name, rules in PAIRS.items() if method in (None, name)}
    found = set().union(*(set(p["found"]) for p in pairs.values()))
    row = {"status": pack_status([p["status"] for p in pairs.values()]),
           "shortcut_status": pack_status([p["shortcut_status"] for p in pairs.values()]),
           "caught": any(p["caught"] for p in pairs.values()),
           "value": max((p["value"] or 0.0 for p in pairs.values()), default=None),
           "shortcut_value": max((p["shortcut_value"] or 0.0 for p in pairs.values()), default=None),
           "seconds": round(seconds, 1), "groups": [g for p in pairs.values() for g in p["groups"]],
           "hotspots": [g for p in pairs.values() for g in p["hotspots"]]}
    if not defective:
        return {**row, "pairs": {name: {k: v for k, v in p.items() if k != "found"} for name, p in pairs.items()}}
    planted = set(defects(rec)["patched_train"])
    for p in pairs.values():
        p["recall"], p["precision"] = recall_precision(set(p.pop("found")), planted)
    spot = next((g for g in row["groups"] if g["class"] == square_class), None)
    baseline = saliency_baseline(session.engine, spot) if spot else set()
    recall, precision = recall_precision(found, planted)
    base_recall, base_precision = recall_precision(baseline, planted)
    return {**row, "planted": len(planted), "found": len(found), "recall": recall, "precision": precision,
            "saliency_baseline_recall": base_recall, "saliency_baseline_precision": base_precision,
            "baseline_found": len(baseline), "pairs": pairs}


def rates(runs: list[dict]) -> dict:
    """The figures of one set of runs (one training-set size, or all)."""
    defective = [r for r in runs if r["defective"]]
    clean = [r for r in runs if not r["defective"]]
    return {
        **pair_rates(defective, clean),
        "saliency_baseline_carrier_recall": mean_of(defective, "saliency_baseline_recall"),
        "saliency_baseline_carrier_precision": mean_of(defective, "saliency_baseline_precision"),
        "defective_failed_rate": float(np.mean([r["status"] == "failed" for r in defective])),
        "shortcut_excess_defective": [r["shortcut_value"] for r in defective],
        "shortcut_excess_clean": [r["shortcut_value"] for r in clean],
        "rule_seconds": [r["seconds"] for r in runs],
        "pairs": {name: pair_rates([r["pairs"][name] for r in defective], [r["pairs"][name] for r in clean])
                  for name in runs[0]["pairs"]} if runs else {},
    }


def pair_rates(defective: list[dict], clean: list[dict]) -> dict:
    """One base map's pair alone: caught, clean false alarms, carriers' mean recall and precision."""
    return {"shortcut_caught_rate": float(np.mean([r["caught"] for r in defective])),
            "shortcut_failed_rate": float(np.mean([r["shortcut_status"] == "failed" for r in defective])),
            "clean_false_alarm_rate": float(np.mean([r["status"] == "failed" or r["shortcut_status"] == "failed"
                                                     for r in clean])),
            "shortcut_carrier_recall": mean_of(defective, "recall"),
            "shortcut_carrier_precision": mean_of(defective, "precision")}


def mean_of(runs: list[dict], key: str) -> float | None:
    """The mean of `key` over the runs that measured it (None when none did)."""
    values = [r[key] for r in runs if r[key] is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, nargs="+", default=[5000, 20000],
                        help="training-set sizes, each run with the same thresholds")
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=None, help="keep models and caches here")
    parser.add_argument("--out", default="carriers.json", help="file name under benchmarks/results/")
    parser.add_argument("--method", default=None, choices=sorted(PAIRS),
                        help="judge one base map's pair alone (default: the pack)")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="auditor-carriers-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for n_train in args.n_train:
            for seed in args.seeds:
                for name, square in VARIANTS.items():
                    for defective in (True, False):
                        rec = recipe(seed, n_train, args.n_test, square, defective)
                        runs.append({"n_train": n_train, "seed": seed, "variant": name, "defective": defective,
                                     **run(rec, work, defective, args.method)})
                        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("groups", "hotspots")}),
                              flush=True)
    document = {
        **rates(runs),
        "by_n_train": {str(n): rates([r for r in runs if r["n_train"] == n]) for n in args.n_train},
        "seeds": args.seeds, "variants": list(VARIANTS), "n_train": args.n_train, "n_test": args.n_test,
        "rules": PAIRS, "method": args.method, "seconds": round(time.perf_counter() - start, 1),
        "environment": environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")), "runs": runs,
    }
    path = write_json(args.out, document)
    print(json.dumps({k: v for k, v in document.items() if k not in ("runs",)}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
