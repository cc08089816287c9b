"""Does the auditor catch planted defects on real data, and stay quiet on clean models?

For every seed and shortcut variant it trains the sample CNN on Fashion-MNIST twice — with a
planted coloured square on part of one class plus relabelled images (defective), and without
them (clean) — audits both on the same test set (the square shows on 10% of test images of
every class) with the shipped rule packs, and reports:

- shortcut_caught_rate: defective runs where `no-patch-shortcut` fails;
- patch_in_top_window_rate: defective runs whose top hotspot window overlaps the square;
- clean_false_alarm_rate: clean runs where any shipped `fail` rule fails;
- mislabel_top5_recall: planted mislabels among the top-5 proponents of the errors they cause
  (test images of the source class predicted as the target class);
- mislabel_auc / loss_baseline_auc: ranking planted mislabels by the opponent count of
  `harmful_training_images` vs by per-example training loss, in the same run.

    python -m benchmarks.efficacy [--seeds 0 1 2] [--n-train 20000]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import environment, write_json

VARIANTS = {
    "red-4px-top-left-shirt-50%": {"class": "Shirt", "train_share": 0.5, "test_share": 0.1, "size": 4,
                                   "colour": [255, 0, 0], "position": [1, 1]},
    "blue-4px-top-right-pullover-40%": {"class": "Pullover", "train_share": 0.4, "test_share": 0.1, "size": 4,
                                        "colour": [0, 0, 255], "position": [1, 23]},
}
MISLABEL = {"from": "Sneaker", "to": "Sandal", "count": 30}
PACKS = [{"pack": "shortcuts"}, {"pack": "label_noise"}, {"pack": "localization"}]


def auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    order = scores.argsort(kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recipe(seed: int, n_train: int, n_test: int, square: dict, defective: bool) -> dict:
    square = dict(square, train_share=square["train_share"] if defective else 0.0)
    out = {"n_train": n_train, "n_test": n_test, "epochs": 3, "seed": seed, "square": square}
    if defective:
        out["mislabel"] = copy.deepcopy(MISLABEL)
    return out


def train_model(rec: dict, folder: Path) -> Path:
    from sample_audits.fashion import train_set
    from sample_audits.models import small_cnn
    from sample_audits.train import train

    digest = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:12]
    path = folder / f"model-{rec['seed']}-{digest}.pt"
    if not path.exists():
        torch.manual_seed(rec["seed"])
        torch.save(train(small_cnn(), train_set(recipe=rec), rec["epochs"], rec["seed"]).state_dict(), path)
    return path


def audit_session(rec: dict, checkpoint: Path, folder: Path, **rules):
    """An audit session of the sample CNN on the recipe's data; `rules` are the YAML's
    `include:` and/or `rules:` entries."""
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    doc = {"audit": "efficacy", "model": {"factory": "sample_audits.models:small_cnn", "checkpoint": str(checkpoint)},
           "data": {"train": {"factory": "sample_audits.fashion:train_set", "kwargs": {"recipe": rec}},
                    "test": {"factory": "sample_audits.fashion:test_set", "kwargs": {"recipe": rec}}},
           "settings": {"device": "auto", "cache_dir": str(folder / "cache")}, **rules}
    path = folder / f"audit-{checkpoint.stem}-{'-'.join(sorted(rules))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return AuditSession(load_spec(path))


def audit(rec: dict, checkpoint: Path, folder: Path):
    """Run the shipped packs on the model; return the session (engine and outcomes)."""
    session = audit_session(rec, checkpoint, folder, include=PACKS)
    session.recipe = rec
    session.run_all()
    return session


def training_loss(engine) -> np.ndarray:
    losses = []
    model, n = engine.target.model, len(engine.target.train)
    with torch.no_grad():
        for start in range(0, n, 2048):
            images, labels = engine.train_batch(torch.arange(start, min(n, start + 2048)))
            logits = model(images.to(engine.device))
            losses.append(torch.nn.functional.cross_entropy(logits, labels.to(engine.device), reduction="none").cpu())
    return torch.cat(losses).numpy()


def overlaps(window: list[int], square: dict) -> bool:
    row, col, side = window
    top, left = square["position"]
    size = square["size"]
    return row < top + size and top < row + side and col < left + size and left < col + side


def measure_defective(session, rec: dict) -> dict:
    from auditor.checks.harmful_training_images import harm_counts
    from sample_audits.fashion import FASHION_MNIST_CLASSES, defects

    engine, outcomes = session.engine, session.outcomes
    shortcut = outcomes["no-patch-shortcut"]
    groups = shortcut.result.extra["hotspots"] if shortcut.result else []
    top = max(groups, key=lambda g: g["excess"]) if groups else None
    planted = np.zeros(len(engine.target.train), dtype=bool)
    planted[defects(rec)["relabelled_train"]] = True
    p = engine.predictions
    source, target = (FASHION_MNIST_CLASSES.index(rec["mislabel"][k]) for k in ("from", "to"))
    caused = ((p.labels == source) & (p.predicted == target)).nonzero().flatten()
    found = set(engine.influence(caused).proponents.indices[:, :5].flatten().tolist()) if len(caused) else set()
    errors = (~p.correct).nonzero().flatten()
    in_any = set(engine.influence(errors).proponents.indices[:, :5].flatten().tolist())
    counts, _ = harm_counts(engine, p.correct.nonzero().flatten(), "opponents", 5)
    counts = counts.numpy().astype(float)
    harmful = outcomes["no-mislabel-suspects"]
    flagged = {f.index for f in harmful.failures}
    return {
        **summary(session),
        "shortcut_excess": shortcut.result.value if shortcut.result else None,
        "top_hotspot": top,
        "patch_in_top_window": bool(top and top["predicted"] == rec["square"]["class"]
                                    and overlaps(top["window"], rec["square"])),
        "errors_caused": len(caused),
        "mislabels_in_top5_of_caused": len(found & set(planted.nonzero()[0].tolist())),
        "mislabels_in_top5_of_any_error": len(in_any & set(planted.nonzero()[0].tolist())),
        "share_of_train_in_top5_of_any_error": len(in_any) / len(planted),
        "n_mislabels": int(planted.sum()),
        "mislabel_auc": auc(planted, counts),
        "loss_baseline_auc": auc(planted, training_loss(engine)),
        "flagged": len(flagged), "flagged_planted": len(flagged & set(planted.nonzero()[0].tolist())),
        "opponent_count_planted_median": float(np.median(counts[planted])),
        "opponent_count_clean_q999": float(np.quantile(counts[~planted], 0.999)),
    }


def summary(session) -> dict:
    """Which rules failed or warned, each rule's value, accuracy, and how often the square
    turns another class's test image into the square's class (the shortcut's strength)."""
    from sample_audits.fashion import FASHION_MNIST_CLASSES, defects

    engine, rec = session.engine, session.recipe
    p = engine.predictions
    square = rec["square"]
    target = FASHION_MNIST_CLASSES.index(square["class"])
    patched = torch.zeros(len(p.labels), dtype=torch.bool)
    patched[defects(rec)["patched_test"]] = True
    others = patched & (p.labels != target)
    return {"failed": sorted(n for n, o in session.outcomes.items() if o.status == "failed"),
            "shortcut_effect": float((p.predicted[others] == target).float().mean()),
            "warned": sorted(n for n, o in session.outcomes.items() if o.status == "warned"),
            "values": {n: (o.result.value if o.result else None) for n, o in session.outcomes.items()},
            "accuracy": float(session.engine.predictions.correct.float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--work", type=Path, default=None, help="keep models and caches here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="auditor-efficacy-"))
    work.mkdir(parents=True, exist_ok=True)
    runs, start = [], time.perf_counter()
    for seed in args.seeds:
        for name, square in VARIANTS.items():
            for defective in (True, False):
                rec = recipe(seed, args.n_train, args.n_test, square, defective)
                session = audit(rec, train_model(rec, work), work)
                row = measure_defective(session, rec) if defective else summary(session)
                runs.append({"seed": seed, "variant": name, "defective": defective, **row})
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "values"}), flush=True)
    defective = [r for r in runs if r["defective"]]
    clean = [r for r in runs if not r["defective"]]
    n_mislabels = sum(r["n_mislabels"] for r in defective)
    document = {
        "shortcut_caught_rate": float(np.mean(["no-patch-shortcut" in r["failed"] for r in defective])),
        "patch_in_top_window_rate": float(np.mean([r["patch_in_top_window"] for r in defective])),
        "clean_false_alarm_rate": float(np.mean([bool(r["failed"]) for r in clean])),
        "mislabel_top5_recall": sum(r["mislabels_in_top5_of_caused"] for r in defective) / n_mislabels,
        "mislabel_top5_recall_any_error": sum(r["mislabels_in_top5_of_any_error"] for r in defective) / n_mislabels,
        "mislabel_auc": float(np.mean([r["mislabel_auc"] for r in defective])),
        "loss_baseline_auc": float(np.mean([r["loss_baseline_auc"] for r in defective])),
        "label_noise_rule_caught_rate": float(np.mean(["no-mislabel-suspects" in r["failed"] for r in defective])),
        "shortcut_excess_defective": [r["shortcut_excess"] for r in defective],
        "shortcut_excess_clean": [r["values"]["no-patch-shortcut"] for r in clean],
        "flagged_defective": [r["flagged"] for r in defective],
        "flagged_clean": [r["values"]["no-mislabel-suspects"] for r in clean],
        "seeds": args.seeds, "variants": list(VARIANTS), "n_train": args.n_train, "n_test": args.n_test,
        "seconds": round(time.perf_counter() - start, 1),
        "environment": environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "runs": runs,
    }
    path = write_json("efficacy.json", document)
    print(json.dumps({k: v for k, v in document.items() if k != "runs"}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
