"""What the model is fed, checked before any rule runs (issue #26, item 1): a training split
transformed unlike the test split, 0–255 floats, and no false warning on data fed right."""

from __future__ import annotations

import html
import json

import pytest
import torch

from auditor.cli import main
from auditor.engine.sanity import accuracy_warnings, pixel_warnings
from conftest import needs_fashion, write

pytestmark = needs_fashion


def audit_of(tmp_path, checkpoint, train: str, test: str) -> str:
    return str(write(tmp_path / "audit_feed.yaml", f"""
audit: feed
model: {{factory: sample_audits.models:small_cnn, checkpoint: {checkpoint}}}
data:
  train: {{factory: fakes:fashion, kwargs: {train}}}
  test: {{factory: fakes:fashion, kwargs: {test}}}
settings: {{device: cpu}}
rules:
  - {{name: fine, check: accuracy, min_accuracy: 0.0}}
"""))


@pytest.mark.parametrize("case,train,test,expected", [
    ("fed right", "{split: train}", "{split: test}", []),
    ("test normalised only", "{split: train}", "{split: test, scale: 3.3, shift: -0.9}",
     ["train and test pixels differ: channel 0"]),
    ("train normalised only", "{split: train, scale: 3.3, shift: -0.9}", "{split: test}",
     ["train and test pixels differ: channel 0"]),
    ("0-255 floats", "{split: train, scale: 255.0}", "{split: test, scale: 255.0}", ["images reach 255"]),
])
def test_what_the_model_is_fed_is_warned_about_before_the_rules(tmp_path, trained_checkpoint, capsys,
                                                                 case, train, test, expected):
    report = tmp_path / "report"
    assert main(["run", audit_of(tmp_path, trained_checkpoint, train, test), "--quiet", "--report", str(report)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) >= len(expected) and all(any(e in w for w in warnings) for e in expected), warnings
    if not expected:
        assert warnings == []
    kept = json.loads((report / "results.json").read_text())["warnings"]           # the report keeps them too
    assert [f"warning: {w}" for w in kept] == warnings
    assert all(html.escape(w) in (report / "index.html").read_text() for w in kept)


def test_thresholds_are_shares_and_standard_deviations():
    assert accuracy_warnings(0.9, 0.85, 10) == []
    assert "own training images" in accuracy_warnings(0.5, 0.85, 10)[0]
    assert "near chance" in accuracy_warnings(0.11, 0.12, 10)[-1]
    same = torch.rand(64, 3, 8, 8)
    assert pixel_warnings(same, torch.rand(64, 3, 8, 8)) == []
    assert "standard deviations apart" in pixel_warnings(same, same + 1)[0]
    assert "standard deviation 0.28" in pixel_warnings(same, same * 3.3)[0]
