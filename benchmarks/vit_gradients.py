"""Per-example gradients of vision transformers: `FuncGradients` (vmap over the batch, attention
on the math kernel) against the same vmap with torch's default fused attention kernel (the engine
before it chose the kernel: torch has no vmap batching rule for the fused kernels and falls back
to a loop per example, with a warning) and against the obviously-correct reference, one backward
per example. Equal gradients are required; the ratio is time per example.

    python -m benchmarks.vit_gradients [--threads 2] [--batch 8] [--device auto]

Writes benchmarks/results/vit_gradients.json.
"""

from __future__ import annotations

import argparse
import warnings

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from auditor.attribution.gradients import FuncGradients, example_loss, select_parameters
from auditor.target import resolve_device
from benchmarks.common import environment, timer, write_json

MODELS = {    # name: (builder, image size)
    "deit_tiny_patch16_224 (timm)": ("timm", 224),
    "VisionTransformer 4 blocks, width 64, 32 px (torchvision)": ("torchvision", 32),
}


def build(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "timm":
        import timm

        return timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10).eval()


def fused_kernel_vmap(model: torch.nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`vmap(grad(loss))` with torch's default attention kernel (what `FuncGradients` ran before)."""
    selected, loss = example_loss(model, names)
    grads = vmap(grad(loss), in_dims=(None, 0, 0))(selected, x, y)
    return torch.cat([grads[n].flatten(1) for n in names], dim=1)


def loop(model: torch.nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference: one ordinary backward per example."""
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), [params[n] for n in names])
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def measure(name: str, kind: str, size: int, batch: int, device: torch.device) -> dict:
    model = build(kind).to(device)
    names = select_parameters(model)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    ways = {"shipped": lambda: FuncGradients(model, names).flat(x, y),
            "fused_kernel_vmap": lambda: fused_kernel_vmap(model, names, x, y),
            "loop": lambda: loop(model, names, x, y)}
    seconds, out, fallback = {}, {}, {}
    for way, run in ways.items():
        run()                                               # warm-up
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with timer(seconds, way):
                out[way] = run()
        fallback[way] = any("batching rule" in str(w.message) for w in caught)
    scale = float(out["loop"].abs().max())
    return {"model": name, "parameters": sum(p.numel() for p in model.parameters()), "image_size": size,
            "batch": batch, **{f"{way}_seconds_per_example": round(s / batch, 4) for way, s in seconds.items()},
            "speedup_vs_fused_kernel_vmap": round(seconds["fused_kernel_vmap"] / seconds["shipped"], 2),
            "speedup_vs_loop": round(seconds["loop"] / seconds["shipped"], 2),
            "fell_back_to_a_loop": fallback,
            "max_abs_diff_vs_loop_over_scale": {way: float((out[way] - out["loop"]).abs().max()) / scale
                                                for way in ("shipped", "fused_kernel_vmap")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    for name, (kind, size) in MODELS.items():
        rows.append(measure(name, kind, size, args.batch, device))
        print(rows[-1], flush=True)
    path = write_json("vit_gradients.json", {"command": f"python -m benchmarks.vit_gradients --threads {args.threads} "
                                                        f"--batch {args.batch}",
                                             "environment": environment(device), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
