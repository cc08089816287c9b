"""Per-image time of each base saliency method vs captum's, same model, images and targets.

    python -m benchmarks.saliency_vs_captum [--n-images 256] [--threads 2] [--device auto]

captum: Saliency(abs=False), InputXGradient, IntegratedGradients (32 Gauss-Legendre steps,
internal_batch_size = the batch), GuidedBackprop, LayerGradCam on the last conv layer then
`LayerAttribution.interpolate` (bilinear). The maps must agree (max abs difference reported);
min of `--repeats` interleaved runs. Adds a `saliency` table to benchmarks/results/peers.json.
"""

from __future__ import annotations

import json

import torch

from auditor.attribution.saliency import last_conv_layer, make_method
from benchmarks.common import RESULTS, environment, model_and_test_images, saliency_arguments, timed_call


def captum_methods(model, n: int) -> dict:
    from captum.attr import (GuidedBackprop, InputXGradient, IntegratedGradients, LayerAttribution, LayerGradCam,
                             Saliency)

    layer = dict(model.named_modules())[last_conv_layer(model)]
    cam = LayerGradCam(model, layer)

    def grad_cam(x, t):
        maps = cam.attribute(x, target=t, relu_attributions=True)
        return LayerAttribution.interpolate(maps, x.shape[-2:], interpolate_mode="bilinear")

    return {
        "gradient": lambda x, t: Saliency(model).attribute(x, target=t, abs=False),
        "input_x_gradient": lambda x, t: InputXGradient(model).attribute(x, target=t),
        "integrated_gradients": lambda x, t: IntegratedGradients(model).attribute(
            x, target=t, n_steps=32, internal_batch_size=n),
        "guided_backprop": lambda x, t: GuidedBackprop(model).attribute(x, target=t),
        "grad_cam": grad_cam,
    }


def main() -> None:
    args = saliency_arguments(__doc__, n_images=256)
    model, images, device = model_and_test_images(args)
    with torch.no_grad():
        targets = model(images).argmax(1)
    rows = []
    for name, peer in captum_methods(model, args.n_images).items():
        ours = make_method(name, model, **({"steps": 32} if name == "integrated_gradients" else {}))
        best = {"ours": float("inf"), "captum": float("inf")}
        for _ in range(args.repeats):
            t, a = timed_call(lambda: ours.attribute(images, targets)[:, 0], device)
            best["ours"] = min(best["ours"], t)
            t, b = timed_call(lambda: peer(images, targets), device)
            best["captum"] = min(best["captum"], t)
        row = {"method": name, "ours_ms_per_image": 1e3 * best["ours"] / args.n_images,
               "captum_ms_per_image": 1e3 * best["captum"] / args.n_images,
               "max_abs_diff": float((a - b).abs().max()), "max_abs_map": float(b.abs().max())}
        row["ours_over_captum"] = row["ours_ms_per_image"] / row["captum_ms_per_image"]
        rows.append(row)
        print(f"{name:22s} ours {row['ours_ms_per_image']:.3f} ms/img  captum {row['captum_ms_per_image']:.3f} ms/img"
              f"  ratio {row['ours_over_captum']:.2f}  max|diff| {row['max_abs_diff']:.1e}", flush=True)
    path = RESULTS / "peers.json"
    merged = json.loads(path.read_text()) if path.is_file() else {}
    merged["saliency"] = {"n_images": args.n_images, **environment(device), "rows": rows}
    path.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
