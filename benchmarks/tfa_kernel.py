"""TFA on the curvature-aware kernel score against TFA on Grad-Cos (issue #27, item 3): on the
efficacy benchmark's planted carriers, how often each map's peak lies on the planted square.

TFA is the gradient in the training image of the influence score. With `influence: kernel` the
engine differentiates against the kernel score's own direction, Pᵀ(UᵀU + λI)⁻¹u_z
(`TrainingIndex.tfa_directions`), instead of the test example's exact gradient. For each defective
part-A model of `benchmarks/efficacy.py` (same recipes, same checkpoints in `--work`), the same 50
planted carriers as its `patch_hits` are each paired with the shortcut error they align with most
under the setting's own score (Grad-Cos, or the kernel score), and mapped with SmoothGrad as the
audit's defaults do. Reported per model and averaged: the share of maps whose peak pixel is on the
square (`hit_rate`) and the mean share of |map| inside it (`mass_in_square`), for `grad_cos` and
`kernel`, and the share of carriers whose aligned error is the same under both scores.

    python -m benchmarks.tfa_kernel --work /tmp/eff [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks.common import environment, write_json
from benchmarks.efficacy import VARIANTS, in_square, mapped_carriers, recipe, shortcut_errors, square_hits, train_model

INFLUENCES = ("grad_cos", "kernel")


def engine_for(rec: dict, checkpoint: Path, folder: Path, influence: str):
    """An engine of the sample CNN on the recipe's data with `settings.attribution.influence` set (no rules)."""
    from auditor.engine import Engine
    from auditor.spec import load_spec
    from auditor.target import load_target

    doc = {"audit": "tfa-kernel", "model": {"factory": "sample_audits.models:small_cnn", "checkpoint": str(checkpoint)},
           "data": {"train": {"factory": "sample_audits.fashion:train_set", "kwargs": {"recipe": rec}},
                    "test": {"factory": "sample_audits.fashion:test_set", "kwargs": {"recipe": rec}}},
           "settings": {"device": "auto", "cache_dir": str(folder / "cache"), "attribution": {"influence": influence}},
           "rules": []}
    path = folder / f"audit-{checkpoint.stem}-tfa-{influence}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Engine(load_target(load_spec(path)))


def scores(engine, carriers: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """`(carriers, errors)` the setting's influence score of each carrier on each error."""
    from auditor.attribution.influence import kernel_queries

    queries = engine.index.test_features(errors)
    if engine.settings.attribution.influence == "kernel":
        queries = kernel_queries(queries, engine.index.kernel)
    return engine.index.train_features(carriers) @ queries.T


def measure(rec: dict, folder: Path) -> dict:
    checkpoint = train_model(rec, folder)
    carriers = mapped_carriers(rec)
    out, aligned = {}, {}
    for influence in INFLUENCES:
        engine = engine_for(rec, checkpoint, folder, influence)
        errors = shortcut_errors(engine, rec)
        if len(errors) == 0:
            return {"shortcut_errors": 0}
        aligned[influence] = errors[scores(engine, carriers, errors).argmax(1).cpu()]
        maps = engine.tfa_pairs(list(zip(aligned[influence].tolist(), carriers.tolist())))
        mask = in_square(rec["square"], *maps.shape[2:])
        out[influence] = {key: round(value, 4) for key, value in square_hits(maps, mask).items()}
    out["same_aligned_error"] = round(float((aligned["grad_cos"] == aligned["kernel"]).float().mean()), 4)
    out["shortcut_errors"] = int(len(errors))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--work", type=Path, required=True, help="the efficacy benchmark's work folder (models, caches)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        for name, square in VARIANTS.items():
            row = {"seed": seed, "variant": name, **measure(recipe(seed, args.n_train, args.n_test, square, True), args.work)}
            print(row, flush=True)
            runs.append(row)
    measured = [r for r in runs if "kernel" in r]
    summary = {influence: {key: round(float(np.mean([r[influence][key] for r in measured])), 4)
                           for key in ("hit_rate", "mass_in_square")} for influence in INFLUENCES}
    summary["same_aligned_error"] = round(float(np.mean([r["same_aligned_error"] for r in measured])), 4)
    document = {"summary": summary, "runs": runs, "environment": environment(torch.device("cpu")),
                "command": "python -m benchmarks.tfa_kernel " + " ".join(
                    f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                    for k, v in vars(args).items())}
    print(write_json("tfa_kernel.json", document))
    print(summary)


if __name__ == "__main__":
    main()
