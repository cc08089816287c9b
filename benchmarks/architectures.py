"""Is the shortcuts pack's verdict about what the model relies on, on the architectures users
bring? (issue #25, item 6)

Per architecture × mark × seed, twice (the mark on part of the Shirt training images, and the
clean twin without it; both with the mark on 15% of every class's test images): Fashion-MNIST
written as PNG class folders, the stock model trained from scratch (`arch:` as a user names it),
then `auditor run` with the shipped shortcuts pack in a process of its own (seconds, peak RSS).

Ground truth is **reliance**, measured on the trained model, not only what was planted: the mark
pasted onto 1,000 held-out test images of the other classes that the model gets right, and the
share then predicted Shirt, minus the share after the same area is replaced by the same area of
another of those images (an unmarked patch of the same size). A run is judged against it: the
gate must fail every marked model whose reliance is ≥ 0.1 above control (`caught`), and no
shortcut rule may fail on a clean twin (`false_alarm`). Carriers are judged by file path.
`tfa_seconds_per_pair`: one SmoothGrad TFA pair (16 samples, all parameters) on the trained model,
the second derivative the label pack's explanations take (an architecture whose ops lack a double
backward shows here as `tfa_error`).

Marks: `square` (a red 4×4 square at the top-left corner of 80% of the Shirts) and `text` (the
word "AI" in a 3×5 pixel font, white at 60% opacity, moved up to 2 px each way per image, on 60%).

    python -m benchmarks.architectures [--archs resnet18 mobilenet_v3_small vit efficientnet_b0]
        [--marks square text] [--seeds 0 1 2] [--n-train 2000] [--n-test 500] [--epochs 6]
    bash benchmarks/architectures.sh WORK      # one process per architecture × mark side by side, merged
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import environment, timer, write_json
from benchmarks.resnet_shortcut import audit, measure
from sample_audits.folders import audit_yaml, folder_name, preprocess, train, write_folders

MARKS = {
    "square": {"class": "Shirt", "train_share": 0.8, "test_share": 0.15, "size": 4, "colour": [255, 0, 0],
               "position": [0, 0]},
    "text": {"class": "Shirt", "train_share": 0.6, "test_share": 0.15, "text": "AI", "colour": [255, 255, 255],
             "alpha": 0.6, "jitter": 2, "position": [2, 2]},
}
# name: (torchvision builder or class, its kwargs, input size)
ARCHS = {
    "resnet18": ("resnet18", {}, 32),
    "mobilenet_v3_small": ("mobilenet_v3_small", {}, 64),
    "vit": ("VisionTransformer", {"image_size": 32, "patch_size": 4, "num_layers": 4, "num_heads": 4,
                                  "hidden_dim": 64, "mlp_dim": 128}, 32),
    "efficientnet_b0": ("efficientnet_b0", {}, 64),
    "resnet18_224": ("resnet18", {}, 224),
    "mobilenet_v3_small_224": ("mobilenet_v3_small", {}, 224),
}
RELIANCE_PROBES = 1000
RELIED_ON = 0.1         # reliance over control from which the gate must catch a marked model


def build_model(arch: str) -> torch.nn.Module:
    import torchvision

    builder, kwargs, _ = ARCHS[arch]
    return getattr(torchvision.models, builder)(num_classes=10, **kwargs)


def reliance(model: torch.nn.Module, mark: dict, n_test: int, size: int, device: torch.device) -> dict:
    """The model's accuracy on the held-out images; the share of other classes' correctly predicted
    ones turned Shirt by the mark, and by the same area taken from another such image (the control)."""
    from PIL import Image

    from sample_audits.fashion import mark_box, paint, test_set

    held = test_set(recipe={"n_test": n_test + RELIANCE_PROBES})
    folders = sorted(folder_name(c) for c in held.classes)            # ImageFolder's class order
    as_folder = torch.tensor([folders.index(folder_name(c)) for c in held.classes])
    images, labels = held.images[n_test:], as_folder[held.targets[n_test:]]
    shirt = folders.index(folder_name("Shirt"))
    step = preprocess(size)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        x = torch.stack([step(Image.fromarray(im.permute(1, 2, 0).numpy())) for im in batch])
        with torch.no_grad():
            return torch.cat([model(x[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(x), 256)])

    predicted = predict(images)
    accuracy = round(float((predicted == labels).float().mean()), 4)
    images = images[(predicted == labels) & (labels != shirt)]
    if len(images) == 0:
        return {"accuracy": accuracy, "probes": 0, "marked_to_shirt": None, "control_to_shirt": None,
                "reliance_over_control": None}
    marked = images.clone()
    paint(marked, torch.arange(len(marked)), mark)
    control = images.clone()
    donors = torch.roll(torch.arange(len(images)), 1)
    for i in range(len(images)):
        y, x, h, w = mark_box(i, mark, images.shape[-2:])
        control[i, :, y:y + h, x:x + w] = images[donors[i], :, y:y + h, x:x + w]
    to_shirt = float((predict(marked) == shirt).float().mean())
    control_shirt = float((predict(control) == shirt).float().mean())
    return {"accuracy": accuracy, "probes": int(len(images)), "marked_to_shirt": round(to_shirt, 4),
            "control_to_shirt": round(control_shirt, 4), "reliance_over_control": round(to_shirt - control_shirt, 4)}


def tfa_seconds(model: torch.nn.Module, folder: Path, size: int, device: torch.device) -> dict:
    """Seconds for one SmoothGrad TFA pair on the trained model (a second warm-up pair untimed)."""
    from auditor.attribution.gradients import FuncGradients, select_parameters
    from auditor.attribution.second_order import twice_differentiable
    from auditor.attribution.tfa import tfa
    from sample_audits.folders import image_folder

    dataset = image_folder(folder / "train", size)
    images = torch.stack([dataset[i][0] for i in (0, 1, 2, 3)]).to(device)
    labels = torch.tensor([dataset.targets[i] for i in (0, 1, 2, 3)], device=device)
    names = select_parameters(model)
    times: dict[str, float] = {}
    try:
        with twice_differentiable("benchmark"):
            tests = F.normalize(FuncGradients(model, names).flat(images[2:], labels[2:]), dim=1)
            tfa(model, names, images[:1], labels[:1], tests[:1], 16, 0.1, pair_seeds=[1])
            with timer(times, "pair"):
                tfa(model, names, images[1:2], labels[1:2], tests[1:2], 16, 0.1, pair_seeds=[2])
        return {"tfa_seconds_per_pair": round(times["pair"], 3)}
    except Exception as exc:                       # recorded: an architecture TFA cannot run on
        return {"tfa_seconds_per_pair": None, "tfa_error": f"{type(exc).__name__}: {exc}"[:400]}


def one_run(arch: str, mark_name: str, seed: int, clean: bool, args, work: Path, device: torch.device) -> dict:
    """Plant, train, measure reliance and TFA cost, audit; a crash is recorded, never raised."""
    _, _, size = ARCHS[arch]
    name = f"{arch}-{mark_name}-s{seed}-{'clean' if clean else 'marked'}"
    folder = work / name
    row = {"arch": arch, "mark": mark_name, "seed": seed, "clean": clean, "image_size": size}
    try:
        mark = dict(MARKS[mark_name], train_share=0.0 if clean else MARKS[mark_name]["train_share"])
        plan = {"n_train": args.n_train, "n_test": args.n_test, "seed": seed, "square": mark}
        folder.mkdir(parents=True, exist_ok=True)
        manifest = write_folders(folder, plan)
        start = time.perf_counter()
        model = train(folder / "train", args.epochs, seed, model=build_model(arch), size=size, device=device,
                      precise_bn=True)
        row["train_seconds"] = round(time.perf_counter() - start, 1)
        torch.save(model.state_dict(), folder / "model.pt")
        (folder / "manifest.json").write_text(json.dumps({"recipe": plan, **manifest}, indent=1))
        model = model.to(device).eval()
        row.update(reliance(model, mark, args.n_test, size, device))
        row.update(tfa_seconds(model, folder, size, device))
        del model
        path = folder / "audit.yaml"
        builder, kwargs, _ = ARCHS[arch]
        path.write_text(audit_yaml(name, builder, kwargs, size))
        result = audit(path, ["shortcuts"])
        judged = measure(folder, result["rules"])
        extra = result["rules"]["no-patch-shortcut"].get("extra") or {}
        row.update({"audit_seconds": result["seconds"], "peak_rss_mb": result["peak_rss_mb"],
                    "stated_peak_mb": result["stated_peak_mb"],
                    "empty_maps": extra.get("empty_maps"), "n_maps": extra.get("n_maps"),
                    **{k: judged[k] for k in ("shortcut_status", "excess", "carriers_found", "carrier_recall",
                                              "carrier_precision", "statuses")}})
        failed = any(status == "failed" for status in judged["statuses"].values())
        row["caught"] = None if clean else judged["caught"]
        row["false_alarm"] = failed if clean else None
        row["cannot_judge"] = [n for n, s in judged["statuses"].items() if s not in ("passed", "failed")]
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"[:1000]
    return row


def summary(runs: list[dict]) -> dict:
    """The issue's goals over the runs: caught where relied on, no clean false alarm, carriers, crashes."""
    relied = [r for r in runs if not r["clean"] and "error" not in r and (r["reliance_over_control"] or 0) >= RELIED_ON]
    clean = [r for r in runs if r["clean"] and "error" not in r]
    caught = [r for r in relied if r["caught"]]
    return {"runs": len(runs), "errors": sum("error" in r for r in runs),
            "marked_relied_on": len(relied), "caught_where_relied_on": len(caught),
            "missed_where_relied_on": [f"{r['arch']}/{r['mark']}/s{r['seed']} (reliance {r['reliance_over_control']})"
                                       for r in relied if not r["caught"]],
            "caught_without_reliance": sum(1 for r in runs if not r["clean"] and "error" not in r and r["caught"]
                                           and (r["reliance_over_control"] or 0) < RELIED_ON),
            "clean_runs": len(clean), "clean_false_alarms": sum(bool(r["false_alarm"]) for r in clean),
            "carrier_recall_where_caught": (float(np.mean([r["carrier_recall"] for r in caught])) if caught else None),
            "carrier_precision_where_caught": (float(np.mean(p)) if (p := [r["carrier_precision"] for r in caught
                                                                              if r["carrier_precision"] is not None])
                                               else None),
            "peak_rss_mb_max": max((r.get("peak_rss_mb") or 0) for r in runs) if runs else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=["resnet18", "mobilenet_v3_small", "vit", "efficientnet_b0"],
                        choices=list(ARCHS))
    parser.add_argument("--marks", nargs="+", default=list(MARKS), choices=list(MARKS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="only merge these part files (runs made side by side, as benchmarks/architectures.sh does)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", default="architectures.json")
    args = parser.parse_args()
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="auditor-archs-"))).resolve()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    document = {"command": "python -m benchmarks.architectures " + " ".join(sys.argv[1:]),
                "environment": environment(device), "marks": MARKS,
                "archs": {a: {"builder": ARCHS[a][0], "kwargs": ARCHS[a][1], "image_size": ARCHS[a][2]}
                          for a in args.archs},
                "n_train": args.n_train, "n_test": args.n_test, "epochs": args.epochs, "runs": []}
    if args.merge:
        parts = [json.loads(path.read_text()) for path in args.merge]
        document.update({k: parts[0][k] for k in ("n_train", "n_test", "epochs")},
                        archs={a: v for part in parts for a, v in part["archs"].items()},
                        command=" ; ".join(part["command"] for part in parts),
                        runs=[run for part in parts for run in part["runs"]])
    else:
        for arch in args.archs:
            for mark in args.marks:
                for seed in args.seeds:
                    for clean in (False, True):
                        document["runs"].append(one_run(arch, mark, seed, clean, args, args.work, device))
                        print(json.dumps(document["runs"][-1]), flush=True)
                        document["summary"] = summary(document["runs"])
                        write_json(args.out, document)          # a run cut short keeps what it measured
    document["summary"] = summary(document["runs"])
    print(json.dumps(document["summary"], indent=1))
    print(write_json(args.out, document))


if __name__ == "__main__":
    main()
