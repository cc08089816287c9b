"""Loading model and data: each problem is a TargetError naming the YAML field and the fix."""

from __future__ import annotations

import pytest
import torch

from auditor.engine import Engine
from auditor.errors import TargetError
from auditor.spec import load_spec
from auditor.target import load_target, resolve_device
from conftest import write

BASE = {
    "model": "{factory: fakes:linear}",
    "train": "{factory: fakes:images}",
    "test": "{factory: fakes:images}",
    "settings": "{device: cpu}",
}


def spec_file(tmp_path, **over):
    fields = {**BASE, **over}
    return write(tmp_path / "audit_t.yaml", f"""
audit: t
model: {fields['model']}
data:
  train: {fields['train']}
  test: {fields['test']}
settings: {fields['settings']}
""")


def target_error(tmp_path, **over) -> str:
    with pytest.raises(TargetError) as info:
        target = load_target(load_spec(spec_file(tmp_path, **over)))
        Engine(target).predictions
    return str(info.value)


def test_a_valid_target_loads_in_eval_mode(tmp_path):
    target = load_target(load_spec(spec_file(tmp_path)))
    assert not target.model.training and target.classes == ("c0", "c1", "c2")
    assert Engine(target).predictions.logits.shape == (12, 3)


CASES = {
    "module-missing": ({"model": "{factory: nowhere.models:build}"}, 2,
                       ["cannot import module 'nowhere.models'"]),
    "function-missing": ({"model": "{factory: fakes:nothing}"}, 2, ["module 'fakes' has no function 'nothing'"]),
    "factory-raises": ({"model": "{factory: fakes:raising}"}, 2,
                       ["model factory raised RuntimeError: weights server unreachable"]),
    "not-a-module": ({"model": "{factory: fakes:not_a_module}"}, 2, ["not a torch.nn.Module"]),
    "checkpoint-missing": ({"model": "{factory: fakes:linear, checkpoint: missing.pt}"}, 2,
                           ["model.checkpoint", "missing.pt' not found"]),
    "output-width": ({"model": "{factory: fakes:linear, kwargs: {num_classes: 5}}"}, 2,
                     ["outputs 5 logits but the data has 3 classes"]),
    "empty-test-set": ({"test": "{factory: fakes:empty}"}, 5, ["data.test", "the dataset is empty"]),
    "int-images": ({"test": "{factory: fakes:int_images}"}, 5, ["images must be float tensors", "torch.uint8"]),
    "flat-images": ({"test": "{factory: fakes:flat_images}"}, 5, ["images must be (C, H, W)"]),
    "labels-out-of-range": ({"test": "{factory: fakes:images, kwargs: {label_offset: 2}}"}, 5,
                            ["label 3 of example 1 is outside 0..2"]),
    "nan-output": ({"model": "{factory: fakes:nan_model}"}, 2, ["contains NaN or Inf"]),
    "unknown-arch": ({"model": "{arch: torchvision.models.resnet19, num_classes: 3}"}, 2,
                     ["torchvision has no model 'resnet19'", "resnet18"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_target_names_field_and_fix(tmp_path, case):
    over, line, fragments = CASES[case]
    message = target_error(tmp_path, **over)
    assert f"audit_t.yaml:{line}" in message, message
    assert "fix:" in message
    for fragment in fragments:
        assert fragment in message, message


def test_checkpoint_that_needs_pickle_is_refused(tmp_path):
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "full.pt")
    message = target_error(tmp_path, model="{factory: fakes:linear, checkpoint: full.pt}")
    assert "refuses" in message and "torch.save(model.state_dict(), PATH)" in message


def test_checkpoint_keys_mismatch(tmp_path):
    torch.save({"weight": torch.zeros(3, 64)}, tmp_path / "other.pt")
    message = target_error(tmp_path, model="{factory: fakes:linear, checkpoint: other.pt}")
    assert "does not match the model" in message and "missing 1.weight" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(tmp_path):
    message = target_error(tmp_path, settings="{device: cuda}")
    assert "CUDA is not available" in message and "settings.device" in message


def test_auto_device_is_cpu_without_cuda():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_image_folder_dataset_with_transform(tmp_path):
    from PIL import Image

    for c, name in enumerate(["cat", "dog", "fox"]):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (10, 12), (40 * c, 10 * i, 200)).save(folder / f"{i}.png")
    path = spec_file(tmp_path, test="{image_folder: imgs, transform: {resize: 8, grayscale: true}}")
    target = load_target(load_spec(path))
    assert target.classes == ("cat", "dog", "fox") and target.test[0][0].shape == (1, 8, 8)
    assert Engine(target).predictions.labels.tolist() == [0, 0, 1, 1, 2, 2]
