"""End to end on real data: a model trained with a planted shortcut fails the shipped rules and
names the training images that carry it; its clean twin passes. The shortcuts-pack test runs
in the default selection (about 20 s on 2 cores); the all-packs one is `slow`."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import needs_fashion

pytestmark = [needs_fashion]
SQUARE = {"class": "Shirt", "train_share": 0.5, "test_share": 0.1, "size": 4, "colour": [255, 0, 0],
          "position": [1, 1]}


def audit(tmp_path, recipe: dict, name: str, packs: tuple[str, ...] = ("shortcuts", "label_noise", "localization")):
    from auditor.session import AuditSession
    from auditor.spec import load_spec
    from sample_audits.fashion import train_set
    from sample_audits.models import small_cnn
    from sample_audits.train import train

    torch.manual_seed(recipe["seed"])
    checkpoint = tmp_path / f"{name}.pt"
    torch.save(train(small_cnn(), train_set(recipe=recipe), recipe["epochs"], recipe["seed"]).state_dict(), checkpoint)
    doc = {"audit": name, "model": {"factory": "sample_audits.models:small_cnn", "checkpoint": str(checkpoint)},
           "data": {"train": {"factory": "sample_audits.fashion:train_set", "kwargs": {"recipe": recipe}},
                    "test": {"factory": "sample_audits.fashion:test_set", "kwargs": {"recipe": recipe}}},
           "settings": {"device": "cpu", "cache_dir": str(tmp_path / "cache")},
           "include": [{"pack": pack} for pack in packs]}
    path = tmp_path / f"audit_{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return {o.rule.name: o for o in AuditSession(load_spec(path)).run_all()}


def test_planted_shortcut_fails_with_its_carriers_named_and_the_clean_twin_passes(tmp_path):
    from sample_audits.fashion import defects

    base = {"n_train": 10000, "n_test": 3000, "epochs": 3, "seed": 0}
    recipe = {**base, "square": SQUARE}
    shortcut = audit(tmp_path, recipe, "shortcut", packs=("shortcuts",))
    clean = audit(tmp_path, {**base, "square": {**SQUARE, "train_share": 0.0}}, "clean", packs=("shortcuts",))
    test_side = shortcut["no-patch-shortcut"]
    assert test_side.status == "failed", test_side.message
    spot, = [g for g in test_side.result.extra["hotspots"] if g["flagged"]]
    row, col, side = spot["window"]
    assert spot["predicted"] == "Shirt" and row <= 4 and col <= 4 and spot["flip_share"] >= 0.5, spot
    carriers = shortcut["no-shortcut-carriers"]
    planted, found = set(defects(recipe)["patched_train"]), {f.index for f in carriers.failures}
    assert carriers.status == "failed" and all(f.kind == "train" for f in carriers.failures)
    assert len(found & planted) / len(planted) >= 0.8 and len(found & planted) / len(found) >= 0.9
    assert {o.status for o in clean.values()} == {"passed"}, {n: o.message for n, o in clean.items()}


@pytest.mark.slow
def test_shortcut_fails_and_clean_passes(tmp_path):
    square = SQUARE
    base = {"n_train": 10000, "n_test": 3000, "epochs": 3, "seed": 0}
    shortcut = audit(tmp_path, {**base, "square": square, "mislabel": {"from": "Sneaker", "to": "Sandal", "count": 30}},
                     "shortcut")
    clean = audit(tmp_path, {**base, "square": {**square, "train_share": 0.0}}, "clean")
    assert shortcut["no-patch-shortcut"].status == "failed"
    shirt = {g["predicted"]: g for g in shortcut["no-patch-shortcut"].result.extra["hotspots"]}["Shirt"]
    assert shirt["flagged"] and shirt["window"][0] <= 4 and shirt["window"][1] <= 4, shirt
    assert all(o.status != "failed" for o in clean.values()), {n: o.message for n, o in clean.items()}


def test_mobilenet_factory_takes_the_samples_28px_images_and_offers_both_label_depths():
    """The label benchmark's held-out MobileNetV3 reads 28-px images (resized inside) and the
    mislabel rule finds its two representations: a mid-depth feature map and the head's input."""
    from auditor.attribution.neighbours import representation_layers
    from sample_audits.models import mobilenet_v3_small

    model = mobilenet_v3_small().eval()
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        assert model(images).shape == (2, 10)
    layers = representation_layers(model, images)
    assert [use_input for _, use_input in layers] == [False, True]
    assert layers[1][0] == "1.classifier.3"
