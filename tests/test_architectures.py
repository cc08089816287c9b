"""The models users bring: torchvision classes that take no `weights`, timm models by name
(`arch: timm:NAME`, never downloaded), each loaded from its checkpoint and audited end to end,
TFA included (fused attention and hardsigmoid run through `second_order`)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from auditor.cli import main
from auditor.errors import TargetError
from auditor.spec import load_spec
from auditor.target import load_model

VIT = {"image_size": 16, "patch_size": 8, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
RULES = [{"name": "fine", "check": "accuracy", "min_accuracy": 0.0},
         {"name": "saliency-border", "check": "region_mass", "source": "saliency", "region": "border", "max_mass": 1.0},
         {"name": "tfa-border", "check": "region_mass", "source": "tfa", "k": 1, "region": "border", "max_mass": 1.0,
          "on": {"indices": [0, 1]}}]


def audit_file(tmp_path, model: dict, size: int, rules: list[dict] = RULES):
    """An audit of `model` (its random weights saved as the checkpoint) on 12 fake RGB images."""
    doc = {"audit": "arch", "model": {**model, "num_classes": 3},
           "data": {"train": {"factory": "fakes:images", "kwargs": {"channels": 3, "size": size}},
                    "test": {"factory": "fakes:images", "kwargs": {"channels": 3, "size": size}}},
           "settings": {"device": "cpu", "cache_dir": str(tmp_path / "cache"), "attribution": {"top_k": 2}},
           "rules": rules}
    path = tmp_path / "audit_arch.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    torch.manual_seed(0)
    model = load_model(load_spec(path).model, tmp_path)
    with torch.no_grad():                   # a zero-initialised head (torchvision's ViT) ignores the input
        for name, p in model.named_parameters():
            if name.endswith("weight") and not p.any():
                p.normal_(0, 0.1)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    doc["model"]["checkpoint"] = "model.pt"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(path, tmp_path) -> dict[str, dict]:
    assert main(["run", str(path), "--report", str(tmp_path / "report"), "--quiet"]) == 0
    return {r["name"]: r for r in json.loads((tmp_path / "report" / "results.json").read_text())["rules"]}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("model,size", [({"arch": "torchvision.models.VisionTransformer", "kwargs": VIT}, 16),
                                        ({"arch": "mobilenet_v3_small"}, 32)], ids=["vit_class", "mobilenet_v3"])
def test_torchvision_classes_and_builders_audit_with_tfa(tmp_path, model, size):
    path = audit_file(tmp_path, model, size)
    rules = run(path, tmp_path)
    assert all(r["status"] == "passed" for r in rules.values()), rules
    assert rules["tfa-border"]["n_selected"] == 2


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("efficientnet_b0", {}),
                                         ("deit_tiny_patch16_224", {"img_size": 16, "patch_size": 8})])
def test_timm_models_by_name_load_their_checkpoint_and_audit_with_tfa(tmp_path, name, kwargs):
    pytest.importorskip("timm")
    path = audit_file(tmp_path, {"arch": f"timm:{name}", "kwargs": kwargs}, 16)
    rules = run(path, tmp_path)
    assert all(r["status"] == "passed" for r in rules.values()), rules


def model_error(tmp_path, model: dict) -> str:
    path = tmp_path / "audit_bad.yaml"
    path.write_text(yaml.safe_dump({"audit": "x", "model": {**model, "num_classes": 3},
                                    "data": {"train": {"factory": "a:b"}, "test": {"factory": "a:b"}}}))
    with pytest.raises(TargetError) as info:
        load_model(load_spec(path).model, tmp_path)
    return str(info.value)


def test_architecture_mistakes_name_the_field_and_the_fix(tmp_path):
    missing = model_error(tmp_path, {"arch": "torchvision.models.VisionTransformer", "kwargs": {"image_size": 16}})
    assert "model.arch: the torchvision.models.VisionTransformer raised TypeError" in missing
    assert "fix: torchvision.models.VisionTransformer takes: " in missing and "patch_size" in missing
    assert "weights" not in missing.split("fix:")[1]
    download = model_error(tmp_path, {"arch": "resnet18", "kwargs": {"weights": "DEFAULT"}})
    assert "model.kwargs: `kwargs.weights` asks for downloaded weights" in download


def test_timm_mistakes_name_the_model_and_the_fix(tmp_path):
    pytest.importorskip("timm")
    assert "did you mean 'timm:deit_tiny_patch16_224'?" in model_error(tmp_path, {"arch": "timm:deit_tiny"})
    assert "`kwargs.pretrained` asks for downloaded weights" in model_error(
        tmp_path, {"arch": "timm:resnet18", "kwargs": {"pretrained": True}})
