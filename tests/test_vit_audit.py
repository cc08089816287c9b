"""A vision transformer end to end on CPU (issue #25): torchvision's ViT trained on the sample's
defective Fashion-MNIST (red square on Shirts, relabelled Sneakers), audited with both shipped
packs. Its fused attention has no double backward; every rule must still reach a verdict (none
inconclusive, no crash, a report)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from auditor.cli import main
from conftest import needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]

RECIPE = {"n_train": 5000, "n_test": 1000, "epochs": 4, "seed": 0,
          "square": {"class": "Shirt", "train_share": 0.5, "test_share": 0.1, "size": 4, "colour": [255, 0, 0],
                     "position": [1, 1]},
          "mislabel": {"from": "Sneaker", "to": "Sandal", "count": 30}}


def test_a_vit_audit_with_both_packs_reaches_a_verdict_on_every_rule(tmp_path, capsys):
    from sample_audits.fashion import train_set
    from sample_audits.models import small_vit
    from sample_audits.train import train

    torch.manual_seed(0)
    model = train(small_vit(), train_set(recipe=RECIPE), RECIPE["epochs"], RECIPE["seed"])
    torch.save(model.state_dict(), tmp_path / "vit.pt")
    doc = {"audit": "vit", "model": {"factory": "sample_audits.models:small_vit", "checkpoint": "vit.pt"},
           "data": {"train": {"factory": "sample_audits.fashion:train_set", "kwargs": {"recipe": RECIPE}},
                    "test": {"factory": "sample_audits.fashion:test_set", "kwargs": {"recipe": RECIPE}}},
           "settings": {"device": "cpu", "cache_dir": str(tmp_path / "cache")},
           "include": [{"pack": "shortcuts"}, {"pack": "label_noise"}]}
    path = tmp_path / "audit_vit.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code = main(["run", str(path), "--report", str(tmp_path / "report"), "--quiet"])
    rules = json.loads((tmp_path / "report" / "results.json").read_text())["rules"]
    print(capsys.readouterr().out)
    assert code in (0, 1)
    assert len(rules) == 6 and all(r["status"] in ("passed", "failed", "warned") for r in rules), \
        [(r["name"], r["status"], r["message"]) for r in rules]
