"""Does the auditor catch planted defects on real data, name the training images behind them,
and stay quiet on clean models? Every figure is measured against the planted ground truth.

Part A, shortcut and relabels (for every seed and shortcut variant): the sample CNN is trained
on Fashion-MNIST twice — with a coloured square on part of one class plus 30 Sneakers relabelled
Sandal (defective), and without them (clean) — and both are audited with the shipped packs on
the same test set (the square on 10% of the test images of every class):
- shortcut_caught_rate / clean_false_alarm_rate: the shortcuts pack flags a spot on the square's
  class on defective models (either of its two base maps' test-side rules, `shortcuts_pack.caught`) /
  any shipped `fail` rule fails on a clean one;
- shortcut_carrier_recall / _precision: the carriers the pack names (the union of its two
  carriers rules' lists, as a user cleans them) against the patched images;
- tfa_patch_hit_rate / saliency_patch_hit_rate (and the mass inside the square): on planted
  carriers, how often the map's peak lies on the square: TFA for the shortcut error it aligns
  with most vs the own-label gradient and input × gradient maps (the obvious baseline);
- mislabel_auc / mislabel_auc_loss_baseline / mislabel_recall_at_2x: the planted relabels in
  `no-mislabel-suspects`' ranking (its neighbours' vote) and in the loss's, and the share of them
  among its first 2 × 30 suspects;
- window_iou / peak_window_iou / carrier_window_iou (medians in the summary): IoU with the planted
  square of the window the flagged hotspot reports (placed by occlusion), of the spot where the
  maps recur, and of the window the carriers are judged with: is the evidence drawn where the
  defect is?
- quanda_shortcut_auprc: quanda's ShortcutDetectionMetric (an independent judge) on our Grad-Cos
  rows of the shortcut errors (`--quanda-python`: an interpreter with quanda installed).
Part B, single-image errors: a wider CNN (width 64, 15 epochs, 5,000 images) that memorises,
with 10 exact copies of test images under a wrong label plus the relabels, and its clean twin,
audited with the label_noise pack:
- single_image_error_recall: copy-driven errors flagged by `no-single-image-errors` with the
  planted copy named as the driver; clean false alarms of that rule.

    python -m benchmarks.efficacy [--seeds 0 1 2] [--n-train 20000] [--n-test 5000] [--quanda-python PY]
                                  [--part A|B|both] [--out efficacy.json]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import environment, strongest_score, write_json
from benchmarks.shortcuts_pack import PAIRS, caught_by

VARIANTS = {
    "red-4px-top-left-shirt-50%": {"class": "Shirt", "train_share": 0.5, "test_share": 0.1, "size": 4,
                                   "colour": [255, 0, 0], "position": [1, 1]},
    "blue-4px-top-right-pullover-40%": {"class": "Pullover", "train_share": 0.4, "test_share": 0.1, "size": 4,
                                        "colour": [0, 0, 255], "position": [1, 23]},
}
MISLABEL = {"from": "Sneaker", "to": "Sandal", "count": 30}
COPIES = {"count": 10, "shift": 0}
MEMORISING = {"width": 64, "epochs": 15, "n_train": 5000}
PACKS = [{"pack": "shortcuts"}, {"pack": "label_noise"}, {"pack": "localization"}]
CARRIERS_MAPPED = 50      # planted carriers whose maps are compared (TFA vs saliency)


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


def recall_precision(found: set[int], planted: set[int]) -> tuple[float, float | None]:
    """Share of the planted set found, and share of the found set planted (None when nothing was found)."""
    hits = len(found & planted)
    return hits / max(1, len(planted)), (hits / len(found) if found else None)


def recipe(seed: int, n_train: int, n_test: int, square: dict | None, defective: bool, copies: bool = False,
           epochs: int = 3) -> dict:
    out = {"n_train": n_train, "n_test": n_test, "epochs": epochs, "seed": seed}
    if square is not None:
        out["square"] = dict(square, train_share=square["train_share"] if defective else 0.0)
    if defective:
        out["mislabel"] = copy.deepcopy(MISLABEL)
        if copies:
            out["copies"] = copy.deepcopy(COPIES)
    return out


def train_model(rec: dict, folder: Path, width: int = 16) -> Path:
    from sample_audits.fashion import train_set
    from sample_audits.models import small_cnn
    from sample_audits.train import train

    digest = hashlib.sha256(json.dumps({**rec, "width": width}, sort_keys=True).encode()).hexdigest()[:12]
    path = folder / f"model-{rec['seed']}-{digest}.pt"
    if not path.exists():
        torch.manual_seed(rec["seed"])
        torch.save(train(small_cnn(width=width), train_set(recipe=rec), rec["epochs"], rec["seed"]).state_dict(), path)
    return path


def audit_session(rec: dict, checkpoint: Path, folder: Path, width: int = 16, **rules):
    """An audit session of the sample CNN on the recipe's data; `rules` are the YAML's
    `include:` and/or `rules:` entries."""
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    model = {"factory": "sample_audits.models:small_cnn", "checkpoint": str(checkpoint)}
    if width != 16:
        model["kwargs"] = {"width": width}
    doc = {"audit": "efficacy", "model": model,
           "data": {"train": {"factory": "sample_audits.fashion:train_set", "kwargs": {"recipe": rec}},
                    "test": {"factory": "sample_audits.fashion:test_set", "kwargs": {"recipe": rec}}},
           "settings": {"device": "auto", "cache_dir": str(folder / "cache")}, **rules}
    path = folder / f"audit-{checkpoint.stem}-{'-'.join(sorted(rules))}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return AuditSession(load_spec(path))


def run_audit(rec: dict, folder: Path, width: int = 16, packs: list | None = None):
    """Train (or reuse) the model, run the packs; the session (engine, outcomes) and the audit's seconds."""
    session = audit_session(rec, train_model(rec, folder, width), folder, width, include=packs or PACKS)
    start = time.perf_counter()
    session.run_all()
    return session, time.perf_counter() - start


def verdicts(session) -> dict:
    outcomes = session.outcomes
    return {"failed": sorted(n for n, o in outcomes.items() if o.status == "failed"),
            "warned": sorted(n for n, o in outcomes.items() if o.status == "warned"),
            "values": {n: (o.result.value if o.result else None) for n, o in outcomes.items()},
            "accuracy": float(session.engine.predictions.correct.float().mean())}


def in_square(square: dict, height: int, width: int) -> torch.Tensor:
    top, left = square["position"]
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:top + square["size"], left:left + square["size"]] = True
    return mask


def shortcut_errors(engine, rec: dict) -> torch.Tensor:
    """Ground truth: patched test images of other classes predicted as the square's class."""
    from sample_audits.fashion import FASHION_MNIST_CLASSES, defects

    c = FASHION_MNIST_CLASSES.index(rec["square"]["class"])
    patched = torch.tensor(defects(rec)["patched_test"], dtype=torch.long)
    p = engine.predictions
    return patched[(p.labels[patched] != c) & (p.predicted[patched] == c)]


def mapped_carriers(rec: dict) -> torch.Tensor:
    """The `CARRIERS_MAPPED` planted carriers whose maps are compared (a seeded draw)."""
    from sample_audits.fashion import defects

    planted = torch.tensor(defects(rec)["patched_train"], dtype=torch.long)
    return planted[torch.randperm(len(planted), generator=torch.Generator().manual_seed(0))[:CARRIERS_MAPPED]]


def square_hits(signed: torch.Tensor, mask: torch.Tensor) -> dict:
    """Share of maps `(p, C, H, W)` whose peak lies in `mask (H, W)`, and their mean share of |map| inside it."""
    magnitude = signed.abs().sum(1).flatten(1)
    inside = mask.flatten()
    return {"hit_rate": float(inside[magnitude.argmax(1)].float().mean()),
            "mass_in_square": float((magnitude[:, inside].sum(1) / magnitude.sum(1).clamp_min(1e-30)).mean())}


def patch_hits(engine, rec: dict, errors: torch.Tensor) -> dict:
    """On planted carriers: share of maps whose peak lies on the square, and mean mass inside it."""
    carriers = mapped_carriers(rec)
    images, labels = engine.train_batch(carriers)
    aligned = errors[engine.grad_cos(carriers, errors).argmax(1)]
    maps = {"tfa": engine.tfa_pairs(list(zip(aligned.tolist(), carriers.tolist()))),
            "gradient": engine.attribute(images, labels, "gradient"),
            "input_x_gradient": engine.attribute(images, labels, "input_x_gradient")}
    mask = in_square(rec["square"], *images.shape[2:])
    return {name: square_hits(signed, mask) for name, signed in maps.items()}


def grad_cos_rows(engine, errors: torch.Tensor) -> torch.Tensor:
    """Grad-Cos of the errors with every training image `(m, n_train)`: the rows the influence rules rank."""
    queries = engine.index.test_features(errors)
    rows = [(block.to(queries.device) @ queries.T).T.cpu() for _, block in engine.index.store.chunks()]
    return torch.cat(rows, dim=1)


def quanda_auprc(python: str, engine, rec: dict, errors: torch.Tensor, folder: Path) -> float | None:
    """quanda's ShortcutDetectionMetric on our Grad-Cos rows, in the interpreter that has quanda."""
    from sample_audits.fashion import FASHION_MNIST_CLASSES, defects

    path = folder / f"quanda-{rec['seed']}-{rec['square']['class']}.pt"
    torch.save({"explanations": grad_cos_rows(engine, errors), "train_labels": engine.train_labels,
                "shortcut_indices": defects(rec)["patched_train"],
                "shortcut_cls": FASHION_MNIST_CLASSES.index(rec["square"]["class"])}, path)
    result = subprocess.run([python, "-m", "benchmarks.quanda_judge", str(path)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    if result.returncode != 0:
        print(f"quanda failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["auprc"]


def measure_defective(session, rec: dict, quanda_python: str | None, folder: Path) -> dict:
    from sample_audits.fashion import defects

    engine, outcomes = session.engine, session.outcomes
    planted = defects(rec)
    carriers = {f.index for _, rule in PAIRS.values() for f in outcomes[rule].failures}
    sides = [outcomes[test_side] for test_side, _ in PAIRS.values()]
    patched = set(planted["patched_train"])
    relabelled = np.zeros(len(engine.train_labels), dtype=bool)
    relabelled[planted["relabelled_train"]] = True
    rule = outcomes["no-mislabel-suspects"].rule.params
    ranking = strongest_score(engine.neighbours(rule.neighbours, rule.layer), engine.train_labels, engine.train_losses)
    suspects = [f.index for f in outcomes["no-mislabel-suspects"].failures]
    top = suspects[:2 * len(planted["relabelled_train"])]
    errors = shortcut_errors(engine, rec)
    hits = patch_hits(engine, rec, errors) if len(errors) else None
    return {
        "shortcut_caught": any(caught_by(o, rec["square"]["class"]) for o in sides),
        "shortcut_errors": len(errors),
        "carriers_found": len(carriers),
        **dict(zip(("carrier_recall", "carrier_precision"), recall_precision(carriers, patched))),
        "patch_hits": hits,
        "mislabel_auc": auc(relabelled, ranking),
        "mislabel_auc_loss_baseline": auc(relabelled, engine.train_losses.numpy()),
        **window_ious(outcomes, rec["square"]),
        "mislabel_recall_at_2x": sum(relabelled[j] for j in top) / int(relabelled.sum()),
        "suspects": len(suspects), "suspects_explained": sum("drives" in f.details for f in
                                                              outcomes["no-mislabel-suspects"].failures),
        "quanda_auprc": quanda_auprc(quanda_python, engine, rec, errors, folder)
        if quanda_python and len(errors) else None,
    }


def box_iou(window: list[int], square: dict) -> float:
    """IoU of a reported `(row, col, side)` window with the planted square."""
    row, col, side = window
    top, left = square["position"]
    size = square["size"]
    rows = max(0, min(row + side, top + size) - max(row, top))
    cols = max(0, min(col + side, left + size) - max(col, left))
    inter = rows * cols
    return inter / (side * side + size * size - inter)


def window_ious(outcomes, square: dict) -> dict:
    """Where the evidence is drawn: IoU of the flagged hotspot's window (the square's class) and
    of the carriers' window with the planted square, from the first of the pack's pairs that
    flagged it; None where none was flagged."""
    spots, carriers = [], []
    for test_side, rule in PAIRS.values():
        judged = [outcomes[name].result.extra if outcomes[name].result else {} for name in (test_side, rule)]
        spots = [h for h in judged[0].get("hotspots", []) if h.get("flagged") and h["predicted"] == square["class"]]
        carriers = [c for c in judged[1].get("carriers", []) if c["class"] == square["class"]]
        if spots:
            break
    return {"window_iou": round(box_iou(spots[0]["window"], square), 4) if spots else None,
            "peak_window_iou": round(box_iou(spots[0].get("peak_window", spots[0]["window"]), square), 4)
            if spots else None,
            "carrier_window_iou": round(box_iou(carriers[0]["window"], square), 4) if carriers else None}


def measure_copies(session, rec: dict) -> dict:
    """Copy-driven errors (a copied test image predicted as its copy's wrong label) and what the rule names."""
    from sample_audits.fashion import defects, wrong_label

    engine, outcome = session.engine, session.outcomes["no-single-image-errors"]
    planted = defects(rec)
    p = engine.predictions
    driven = {t: j for t, j in zip(planted["copied_test"], planted["copies_train"])
              if int(p.predicted[t]) == wrong_label(int(p.labels[t]))}
    named = {f.index: f.details["driver"] for f in outcome.failures}
    return {"copy_driven_errors": len(driven),
            "caught_with_driver": sum(named.get(t) == j for t, j in driven.items()),
            "flagged": len(named), "flagged_not_copy_driven": len(set(named) - set(driven)),
            "flagged_driven_by_a_copy": sum(j in set(planted["copies_train"]) for j in named.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--quanda-python", default=None, help="a Python with quanda installed (bench extra)")
    parser.add_argument("--work", type=Path, default=None, help="keep models and caches here")
    parser.add_argument("--part", choices=["A", "B", "both"], default="both", help="run part A, B or both")
    parser.add_argument("--out", default="efficacy.json", help="file name under benchmarks/results/")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="auditor-efficacy-"))
    work.mkdir(parents=True, exist_ok=True)
    runs, start = [], time.perf_counter()
    for seed in args.seeds:
        for name, square in VARIANTS.items() if args.part != "B" else ():
            for defective in (True, False):
                rec = recipe(seed, args.n_train, args.n_test, square, defective)
                session, seconds = run_audit(rec, work)
                row = {"part": "A", "seed": seed, "variant": name, "defective": defective,
                       "audit_seconds": round(seconds, 1), **verdicts(session)}
                if defective:
                    row |= measure_defective(session, rec, args.quanda_python, work)
                runs.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "values"}), flush=True)
        for defective in (True, False) if args.part != "A" else ():
            rec = recipe(seed, MEMORISING["n_train"], args.n_test, None, defective, copies=True,
                         epochs=MEMORISING["epochs"])
            session, seconds = run_audit(rec, work, MEMORISING["width"], [{"pack": "label_noise"}])
            row = {"part": "B", "seed": seed, "defective": defective, "audit_seconds": round(seconds, 1),
                   **verdicts(session)}
            if defective:
                row |= measure_copies(session, rec)
            runs.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "values"}), flush=True)
    write_json(args.out, summarise(runs, args))
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


def summarise(runs: list[dict], args) -> dict:
    a_def = [r for r in runs if r["part"] == "A" and r["defective"]]
    a_clean = [r for r in runs if r["part"] == "A" and not r["defective"]]
    b_def = [r for r in runs if r["part"] == "B" and r["defective"]]
    b_clean = [r for r in runs if r["part"] == "B" and not r["defective"]]
    hits = [r["patch_hits"] for r in a_def if r["patch_hits"]]
    mean = lambda values: float(np.mean(values)) if values else None  # noqa: E731
    median = lambda values: float(np.median(values)) if values else None  # noqa: E731
    quanda = [r["quanda_auprc"] for r in a_def if r.get("quanda_auprc") is not None]
    driven = sum(r["copy_driven_errors"] for r in b_def)
    return {
        "shortcut_caught_rate": mean([r["shortcut_caught"] for r in a_def]),
        "clean_false_alarm_rate": mean([bool(r["failed"]) for r in a_clean + b_clean]),
        "shortcut_carrier_recall": mean([r["carrier_recall"] for r in a_def]),
        "shortcut_carrier_precision": mean([r["carrier_precision"] for r in a_def if r["carrier_precision"] is not None]),
        "tfa_patch_hit_rate": mean([h["tfa"]["hit_rate"] for h in hits]),
        "saliency_patch_hit_rate": mean([h["gradient"]["hit_rate"] for h in hits]),
        "input_x_gradient_patch_hit_rate": mean([h["input_x_gradient"]["hit_rate"] for h in hits]),
        "tfa_mass_in_square": mean([h["tfa"]["mass_in_square"] for h in hits]),
        "saliency_mass_in_square": mean([h["gradient"]["mass_in_square"] for h in hits]),
        "single_image_error_recall": sum(r["caught_with_driver"] for r in b_def) / driven if driven else None,
        "single_image_copy_driven_errors": driven,
        "single_image_clean_false_alarm_rate": mean(["no-single-image-errors" in r["failed"] for r in b_clean]),
        "window_iou_median": median([r["window_iou"] for r in a_def if r.get("window_iou") is not None]),
        "peak_window_iou_median": median([r["peak_window_iou"] for r in a_def if r.get("peak_window_iou") is not None]),
        "carrier_window_iou_median": median([r["carrier_window_iou"] for r in a_def
                                             if r.get("carrier_window_iou") is not None]),
        "mislabel_auc": mean([r["mislabel_auc"] for r in a_def]),
        "mislabel_auc_loss_baseline": mean([r["mislabel_auc_loss_baseline"] for r in a_def]),
        "mislabel_recall_at_2x": mean([r["mislabel_recall_at_2x"] for r in a_def]),
        "suspect_share_defective": [r["values"]["no-mislabel-suspects"] for r in a_def],
        "suspect_share_clean": [r["values"]["no-mislabel-suspects"] for r in a_clean],
        "quanda_shortcut_auprc": mean(quanda),
        "audit_seconds": mean([r["audit_seconds"] for r in runs if r["part"] == "A"]),
        "audit_seconds_memorising": mean([r["audit_seconds"] for r in runs if r["part"] == "B"]),
        "seeds": args.seeds, "variants": list(VARIANTS), "n_train": args.n_train, "n_test": args.n_test,
        "memorising": MEMORISING, "copies": COPIES, "mislabel": MISLABEL,
        "environment": environment(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "runs": runs,
    }


if __name__ == "__main__":
    main()
