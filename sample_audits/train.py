"""Train a sample audit's model on first use: `python -m sample_audits.train sample_audits/NAME`.

Reads `recipe.yaml` in the audit folder (data size, epochs, seed, planted defects), trains
deterministically on CPU and saves `model.pt` (a state dict) plus a manifest of what was
planted. An existing checkpoint whose manifest matches the recipe is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from auditor.data import ImageTensorDataset, batches
from sample_audits.fashion import defects, train_set
from sample_audits.models import small_cnn


def recipe_of(folder: Path) -> dict:
    return yaml.safe_load((folder / "recipe.yaml").read_text())


def training_set(recipe: dict) -> ImageTensorDataset:
    """The recipe's training images (3-channel uint8 in memory), defects applied."""
    return train_set(recipe=recipe)


def train(model: nn.Module, dataset: ImageTensorDataset, epochs: int, seed: int, lr: float = 2e-3,
          batch_size: int = 128) -> nn.Module:
    """Plain Adam training with a seeded shuffle; deterministic on CPU."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(dataset), generator=generator)
        total, start = 0.0, time.perf_counter()
        for images, labels, _ in batches(dataset, order, batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(images), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(labels)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(dataset):.4f} ({time.perf_counter() - start:.1f}s)")
    return model.eval()


def ensure_trained(folder: Path, force: bool = False) -> Path:
    """Train the folder's model unless a checkpoint for the same recipe exists; return its path."""
    recipe = recipe_of(folder)
    checkpoint, manifest_path = folder / "model.pt", folder / "model.manifest.json"
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    if not force and checkpoint.is_file() and manifest_path.is_file():
        if json.loads(manifest_path.read_text()).get("recipe_hash") == digest:
            print(f"{checkpoint} is up to date (recipe {digest})")
            return checkpoint
    seed = recipe.get("seed", 0)
    torch.manual_seed(seed)
    dataset = training_set(recipe)
    print(f"training {folder.name}: {len(dataset)} images, {recipe.get('epochs', 2)} epochs, seed {seed}")
    model = train(small_cnn(), dataset, recipe.get("epochs", 2), seed)
    tmp = checkpoint.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(checkpoint)
    manifest = {"recipe_hash": digest, "recipe": recipe, "defects": defects(recipe)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"saved {checkpoint}")
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--force", action="store_true", help="retrain even when a checkpoint exists")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ensure_trained(args.folder, args.force)


if __name__ == "__main__":
    main()
