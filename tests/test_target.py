"""Loading model and data (what goes wrong when they do not fit: tests/test_bad_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import torch

from auditor.engine import Engine
from auditor.spec import load_spec
from auditor.target import load_target, resolve_device
from conftest import spec_file

def test_a_valid_target_loads_in_eval_mode(tmp_path):
    target = load_target(load_spec(spec_file(tmp_path)))
    assert not target.model.training and target.classes == ("c0", "c1", "c2")
    assert Engine(target).predictions.logits.shape == (12, 3)


def test_auto_device_is_cpu_without_cuda():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_image_folder_dataset_with_transform(tmp_path):
    from PIL import Image

    for c, name in enumerate(["cat", "dog", "fox"]):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (10, 12), (40 * c, 10 * i, 200)).save(folder / f"{i}.png")
    folder = "{image_folder: imgs, transform: {resize: 8, grayscale: true}}"
    path = spec_file(tmp_path, train=folder, test=folder)       # one class list on both sides
    target = load_target(load_spec(path))
    assert target.classes == ("cat", "dog", "fox") and target.test[0][0].shape == (1, 8, 8)
    assert Engine(target).predictions.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_target_restores_sys_path_and_leaves_user_datasets_untouched(tmp_path):
    import sys

    before = list(sys.path)
    target = load_target(load_spec(spec_file(tmp_path)))
    assert sys.path == before, "loading the target left folders on sys.path"
    assert not any(name.startswith("_auditor") for name in vars(target.train)), "attributes set on the user's dataset"
    assert target.where["train"].field == "data.train" and target.where["test"].line == 5


def folder_with_a_truncated_png(tmp_path) -> tuple[Path, Path]:
    """Three classes of two PNGs each, one of them cut short; an audit over it (train = test)."""
    from PIL import Image

    for c, name in enumerate(["cat", "dog", "fox"]):
        folder = tmp_path / "imgs" / name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (10, 12), (40 * c, 10 * i, 200)).save(folder / f"{i}.png")
    broken = tmp_path / "imgs" / "dog" / "1.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(broken)
    broken.write_bytes(broken.read_bytes()[:2000])                # cut short, as an interrupted copy leaves it
    folder = "{image_folder: imgs, transform: {resize: 8, grayscale: true}}"
    path = spec_file(tmp_path, train=folder, test=folder)
    path.write_text(path.read_text() + "rules:\n  - {name: fine, check: accuracy, min_accuracy: 0.0}\n")
    return path, broken


def test_a_truncated_image_is_one_error_naming_its_file_and_exit_2(tmp_path, capsys):
    from auditor.cli import main

    path, broken = folder_with_a_truncated_png(tmp_path)
    assert main(["run", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken}: cannot read this image: ") and "Traceback" not in err
    assert "fix: replace or delete the file" in err and "skip_unreadable" in err and len(err.strip().splitlines()) == 2


def test_skip_unreadable_leaves_the_file_out_and_lists_it_in_the_report(tmp_path, capsys):
    import json

    from auditor.cli import main

    path, broken = folder_with_a_truncated_png(tmp_path)
    path.write_text(path.read_text().replace("data:\n", "data:\n  skip_unreadable: true\n"))
    assert main(["run", str(path), "--quiet", "--report", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert f"left out 1 unreadable train image (data.skip_unreadable): {broken}" in err
    warnings = json.loads((tmp_path / "report" / "results.json").read_text())["warnings"]
    assert any(str(broken) in w and "test image" in w for w in warnings)
    assert json.loads((tmp_path / "report" / "results.json").read_text())["rules"][0]["n_selected"] == 5
