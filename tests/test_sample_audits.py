"""The sample audits at small scale: the shortcut model fails the shortcut rule, the clean one passes."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]


def audit(tmp_path, recipe: dict, name: str):
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
           "include": [{"pack": "shortcuts"}, {"pack": "label_noise"}, {"pack": "localization"}]}
    path = tmp_path / f"audit_{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return {o.rule.name: o for o in AuditSession(load_spec(path)).run_all()}


def test_shortcut_fails_and_clean_passes(tmp_path):
    square = {"class": "Shirt", "train_share": 0.5, "test_share": 0.1, "size": 4, "colour": [255, 0, 0],
              "position": [1, 1]}
    base = {"n_train": 10000, "n_test": 3000, "epochs": 3, "seed": 0}
    shortcut = audit(tmp_path, {**base, "square": square, "mislabel": {"from": "Sneaker", "to": "Sandal", "count": 30}},
                     "shortcut")
    clean = audit(tmp_path, {**base, "square": {**square, "train_share": 0.0}}, "clean")
    assert shortcut["no-patch-shortcut"].status == "failed"
    shirt = {g["predicted"]: g for g in shortcut["no-patch-shortcut"].result.extra["hotspots"]}["Shirt"]
    assert shirt["flagged"] and shirt["window"][0] <= 4 and shirt["window"][1] <= 4, shirt
    assert all(o.status != "failed" for o in clean.values()), {n: o.message for n, o in clean.items()}
