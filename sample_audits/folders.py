"""A user's own data and model, as the README's newcomer has them: Fashion-MNIST written as PNG
files in ImageFolder class folders, a red mark planted in a corner (most training images of one
class, a share of the test images of every class), and a stock torchvision ResNet-18 trained
with `Normalize` on 32×32 inputs. Used by the efficacy benchmark's ResNet variant and its slow test.

    python -m sample_audits.folders OUT [--clean] [--n-train 2000] [--n-test 500] [--epochs 6]

writes OUT/train/<class>/*.png, OUT/test/<class>/*.png, OUT/model.pt, OUT/manifest.json (the
marked files) and OUT/audit_resnet.yaml (the shipped shortcuts pack on it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from sample_audits.fashion import defects, test_set, train_set

MEAN, STD = (0.286, 0.286, 0.286), (0.353, 0.353, 0.353)
SIZE = 32


def recipe(clean: bool, n_train: int, n_test: int, seed: int = 0) -> dict[str, Any]:
    """The planted mark: a red 4×4 square at the top-left corner of 80% of the Shirt training
    images and of 15% of every class's test images (none on the clean control's training images)."""
    return {"n_train": n_train, "n_test": n_test, "seed": seed,
            "square": {"class": "Shirt", "train_share": 0.0 if clean else 0.8, "test_share": 0.15, "size": 4,
                       "colour": [255, 0, 0], "position": [0, 0]}}


def folder_name(name: str) -> str:
    return name.replace("/", "-").replace(" ", "_")


def write_folders(out: Path, plan: dict[str, Any]) -> dict[str, list[str]]:
    """The recipe's images as PNGs in class folders; the files of the planted defects."""
    files: dict[str, list[str]] = {}
    for split, dataset in (("train", train_set(recipe=plan)), ("test", test_set(recipe=plan))):
        paths = []
        for i in range(len(dataset)):
            label = int(dataset.targets[i])
            path = out / split / folder_name(dataset.classes[label]) / f"{split}-{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(dataset.images[i].permute(1, 2, 0).numpy()).save(path)
            paths.append(str(path))
        files[split] = paths
    planted = defects(plan)
    return {"marked_train": [files["train"][i] for i in planted["patched_train"]],
            "marked_test": [files["test"][i] for i in planted["patched_test"]]}


def preprocess(size: int = SIZE):
    """The audit's `transform: {resize, mean, std}` as torchvision steps on a PIL image."""
    from torchvision import transforms

    return transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


def image_folder(root: Path, size: int = SIZE):
    """The folder as the audit reads it (`image_folder:` with `transform: {resize, mean, std}`)."""
    from torchvision import datasets

    return datasets.ImageFolder(str(root), transform=preprocess(size))


def resnet18() -> nn.Module:
    from torchvision.models import resnet18 as build

    return build(weights=None, num_classes=10)


def train(root: Path, epochs: int, seed: int, batch_size: int = 64, lr: float = 1e-3, model: nn.Module | None = None,
          size: int = SIZE, device: str | torch.device = "cpu", precise_bn: bool = False) -> nn.Module:
    """`model` (default a torchvision ResNet-18) trained from scratch with Adam, seeded, on `device`
    (returned on the CPU); the images are loaded once. `precise_bn`: batch-norm statistics
    recomputed over the training set at the end (see `recompute_batch_norm`)."""
    torch.manual_seed(seed)
    dataset = image_folder(root, size)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(device)
    labels = torch.tensor(dataset.targets).to(device)
    model, generator = (model or resnet18()).to(device), torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        model.train()
        order, start, total = torch.randperm(len(labels), generator=generator), time.perf_counter(), 0.0
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size].to(device)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(labels):.4f} ({time.perf_counter() - start:.1f}s)")
    if precise_bn:
        recompute_batch_norm(model, images, batch_size)
    return model.cpu().eval()


def recompute_batch_norm(model: nn.Module, images: torch.Tensor, batch_size: int) -> None:
    """Batch-norm running statistics as the plain average over the training images: MobileNetV3's
    momentum of 0.01 leaves them near their initial values after a few hundred steps, and the model
    then predicts one class in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None                    # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(images[i:i + batch_size])


AUDIT = """audit: {name}
model:
  arch: torchvision.models.{builder}
  num_classes: 10
{kwargs}  checkpoint: model.pt
data:
  train: {{image_folder: train, transform: {{resize: {size}, mean: {mean}, std: {std}}}}}
  test: {{image_folder: test, transform: {{resize: {size}, mean: {mean}, std: {std}}}}}
settings: {{device: auto, cache_dir: cache}}
include: [{{pack: shortcuts}}]
"""


def audit_yaml(name: str, builder: str = "resnet18", kwargs: dict[str, Any] | None = None, size: int = SIZE) -> str:
    """The audit a user writes for the folders: the torchvision `builder` (with its `kwargs`) at
    `size` pixels and the shipped shortcuts pack."""
    lines = "".join(f"    {k}: {v}\n" for k, v in (kwargs or {}).items())
    return AUDIT.format(name=name, builder=builder, kwargs=f"  kwargs:\n{lines}" if lines else "", size=size,
                        mean=list(MEAN), std=list(STD))


def build(out: Path, clean: bool = False, n_train: int = 2000, n_test: int = 500, epochs: int = 6,
          seed: int = 0) -> Path:
    """Write the folders, train the model, write the audit; return the audit file."""
    out.mkdir(parents=True, exist_ok=True)
    plan = recipe(clean, n_train, n_test, seed)
    manifest = write_folders(out, plan)
    model = train(out / "train", epochs, seed)
    torch.save(model.state_dict(), out / "model.pt")
    (out / "manifest.json").write_text(json.dumps({"recipe": plan, **manifest}, indent=1))
    audit = out / "audit_resnet.yaml"
    audit.write_text(audit_yaml(f"resnet-{'clean' if clean else 'marked'}"))
    return audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--clean", action="store_true", help="no mark on the training images (the control)")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build(args.out, args.clean, args.n_train, args.n_test, args.epochs, args.seed))


if __name__ == "__main__":
    main()
