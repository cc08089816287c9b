"""Batched VAR vs a faithful loop over classes in the reference style, |K| = 2, 4, 10.

    python -m benchmarks.var_vs_reference [--n-images 256] [--threads 2] [--device auto]

Reference style (as the VAR paper's code and captum's `attribute(target=c)` calls are used):
one base-method call per class in K (a forward and a backward pass each), the K maps stacked,
then the VAR formula. Ours: one call for all K classes (`SaliencyMethod.attribute(images, (b, K))`:
one forward pass, the K classes' gradients from it), then the same formula. Both on the sample
audits' CNN and real Fashion-MNIST test images; the maps must agree (max abs difference
reported). Min of `--repeats` interleaved runs.
Also times, at K = 4, the two ways of taking the K classes' gradients from one forward pass
(`batched_backward`: one vmapped backward vs K passes over the retained graph), the figure
behind `batched_backward_default`. Adds `var_time_over_reference_k4`, a `var` table and
`var_batched_backward` to benchmarks/results/peers.json.
"""

from __future__ import annotations

import json

import torch

from auditor.attribution.saliency import make_method
from auditor.attribution.var import class_set, var
from benchmarks.common import RESULTS, environment, model_and_test_images, saliency_arguments, timed_call

METHODS = ("gradient", "input_x_gradient", "integrated_gradients", "grad_cam")


def ours(method, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return var(method.attribute(images, classes), 0)


def reference(method, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """One call per class position, like a loop of `attribute(target=c)`."""
    maps = torch.stack([method.attribute(images, classes[:, j])[:, 0] for j in range(classes.shape[1])], dim=1)
    return var(maps, 0)


def batched_backward_rows(model, images: torch.Tensor, logits: torch.Tensor, device, repeats: int) -> list[dict]:
    """K = 4, input-gradient methods: ours with one vmapped backward and with K backward passes,
    each as a share of the reference loop's time (min of interleaved repeats)."""
    classes = class_set(logits, logits.argmax(1), 3)
    rows = []
    for name in ("gradient", "input_x_gradient"):
        methods = {mode: make_method(name, model, batched_backward=mode == "batched") for mode in ("batched", "k_passes")}
        times: dict[str, list[float]] = {"batched": [], "k_passes": [], "reference": []}
        for _ in range(repeats):
            for mode, method in methods.items():
                times[mode].append(timed_call(lambda: ours(method, images, classes), device)[0])
            times["reference"].append(timed_call(lambda: reference(methods["k_passes"], images, classes), device)[0])
        best = {mode: min(values) for mode, values in times.items()}
        row = {"method": name, "k": 4, **{f"{m}_s": v for m, v in best.items()},
               "batched_over_reference": best["batched"] / best["reference"],
               "k_passes_over_reference": best["k_passes"] / best["reference"]}
        rows.append(row)
        print(f"{name:22s} K= 4  one vmapped backward {row['batched_over_reference']:.2f}  "
              f"K backward passes {row['k_passes_over_reference']:.2f}  (of the reference time)", flush=True)
    return rows


def main() -> None:
    args = saliency_arguments(__doc__, n_images=128)
    model, images, device = model_and_test_images(args)
    with torch.no_grad():
        logits = model(images)
    rows = []
    for name in METHODS:
        method = make_method(name, model, **({"steps": 32} if name == "integrated_gradients" else {}))
        for k in (2, 4, 10):
            classes = class_set(logits, logits.argmax(1), k - 1)
            ours(method, images[:8], classes[:8])  # warm-up
            times = {"ours": [], "reference": []}
            for _ in range(args.repeats):
                t_ours, a = timed_call(lambda: ours(method, images, classes), device)
                t_ref, b = timed_call(lambda: reference(method, images, classes), device)
                times["ours"].append(t_ours)
                times["reference"].append(t_ref)
            row = {"method": name, "k": k, "ours_s": min(times["ours"]), "reference_s": min(times["reference"]),
                   "max_abs_diff": float((a - b).abs().max()), "scale": float(b.abs().max())}
            row["ratio"] = row["ours_s"] / row["reference_s"]
            rows.append(row)
            print(f"{name:22s} K={k:2d}  ours {row['ours_s']:.3f} s  reference {row['reference_s']:.3f} s  "
                  f"ratio {row['ratio']:.2f}  max|diff| {row['max_abs_diff']:.1e} (max|map| {row['scale']:.1e})",
                  flush=True)
    backward = batched_backward_rows(model, images, logits, device, args.repeats)
    k4 = [r["ratio"] for r in rows if r["k"] == 4]
    path = RESULTS / "peers.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged["var"] = {"n_images": args.n_images, **environment(device), "rows": rows}
    merged["var_time_over_reference_k4"] = round(max(k4), 3)
    merged["var_time_over_reference_k4_by_method"] = {r["method"]: round(r["ratio"], 3) for r in rows if r["k"] == 4}
    merged["var_batched_backward"] = {**environment(device), "rows": backward}
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
