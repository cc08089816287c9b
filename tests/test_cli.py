"""`auditor run` / `auditor validate`: exit codes and agreement with the pytest plugin."""

from __future__ import annotations

import json

import pytest

from auditor.cli import main
from conftest import HEAD, needs_fashion, write

RULES = """
rules:
  - {name: fine, check: accuracy, min_accuracy: 0.3}
  - {name: strict, check: accuracy, on: misclassified, min_accuracy: 0.5}
"""


@needs_fashion
def test_run_exit_codes_and_report(fashion_audit, tmp_path, capsys):
    passing = fashion_audit("rules:\n  - {name: fine, check: accuracy, min_accuracy: 0.3}\n", name="audit_ok.yaml")
    assert main(["run", str(passing)]) == 0
    failing = fashion_audit(RULES)
    assert main(["run", str(failing), "--report", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    assert "FAILED  strict" in out and "results:" in out
    assert json.loads((tmp_path / "r" / "results.json").read_text())["passed"] is False


def test_bad_input_exits_2_with_location(tmp_path, capsys):
    path = write(tmp_path / "audit_bad.yaml",
                 "audit: x\nmodel: {factory: a.b}\ndata: {train: {factory: a:b}, test: {factory: a:b}}\n")
    assert main(["run", str(path)]) == 2
    assert f"{path}:2: model.factory" in capsys.readouterr().err
    assert main(["validate", str(path)]) == 2


def test_validate_lists_rules(tmp_path, capsys):
    path = write(tmp_path / "audit_ok.yaml", """
audit: x
model: {factory: a:b}
data: {train: {factory: a:b}, test: {factory: a:b}}
include: [{pack: shortcuts}]
rules:
  - {name: r1, check: accuracy, min_accuracy: 0.5}
""")
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "audit_ok.yaml:6: r1 (accuracy, on all)" in out
    assert "shortcuts.yaml:" in out and ": no-patch-shortcut (saliency_concentration" in out   # a pack rule's own file


@needs_fashion
def test_cli_and_plugin_agree(fashion_audit, tmp_path, pytester):
    path = fashion_audit(RULES)
    main(["run", str(path), "--report", str(tmp_path / "cli")])
    pytester.runpytest(str(path), "-p", "no:cacheprovider", f"--audit-report={tmp_path / 'plugin'}")
    cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    plugin = json.loads((tmp_path / "plugin" / "results.json").read_text())
    for document in (cli, plugin):                           # only the times may differ
        assert document.pop("created") and document.pop("seconds") >= 0
        for rule in document["rules"]:
            assert rule.pop("seconds") >= 0
    assert cli == plugin and len(cli["rules"]) == 2 and any(r["failures"] for r in cli["rules"])


TFA_ON_FUSED_ATTENTION = HEAD.replace("fakes:linear", "fakes:fused_attention").lstrip("\n") + """\
settings: {device: cpu, attribution: {top_k: 2}}
rules:
  - {name: tfa-border, check: region_mass, source: tfa, k: 1, region: border, max_mass: 1.0}
  - {name: fine, check: accuracy, min_accuracy: 0.0}
"""


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_a_rule_that_cannot_run_on_the_model_is_inconclusive_and_the_next_rules_report(tmp_path, capsys):
    path = write(tmp_path / "audit_fused.yaml", TFA_ON_FUSED_ATTENTION)
    report = tmp_path / "r"
    assert main(["run", str(path), "--report", str(report), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "INCONCLUSIVE tfa-border: cannot judge:" in out and "PASSED  fine" in out
    assert "_scaled_dot_product_flash_attention_for_cpu_backward" in out
    rules = {r["name"]: r for r in json.loads((report / "results.json").read_text())["rules"]}
    assert rules["tfa-border"]["status"] == "inconclusive" and rules["fine"]["status"] == "passed"
    assert f"{path}:2: model: TFA needs second derivatives" in rules["tfa-border"]["message"]
    assert main(["run", str(path), "--strict", "--quiet"]) == 1


def test_what_the_loaded_model_and_data_decide_is_checked_before_the_first_rule(tmp_path, capsys):
    head = TFA_ON_FUSED_ATTENTION.split("rules:")[0].replace("fakes:fused_attention", "fakes:linear")
    for body, expected in [("  - {name: on-class, check: accuracy, on: {class: c7}, min_accuracy: 0.0}\n",
                            "unknown class 'c7'"),
                           ("  - {name: suspects, check: mislabel_suspects, layer: fc9}\n",
                            "rules[suspects].layer: the model has no module named 'fc9'")]:
        path = write(tmp_path / "audit_late.yaml", head + "rules:\n  - {name: fine, check: accuracy, min_accuracy: 0.0}\n"
                     + body)
        assert main(["run", str(path), "--quiet"]) == 2
        captured = capsys.readouterr()
        assert expected in captured.err and "PASSED  fine" not in captured.out, captured
    layers = write(tmp_path / "audit_layers.yaml", head.replace("top_k: 2", "top_k: 2, layers: [fc9]")
                   + "rules:\n  - {name: fine, check: accuracy, min_accuracy: 0.0}\n")
    assert main(["run", str(layers), "--quiet"]) == 2
    assert "settings.attribution.layers: the model has no module named 'fc9'" in capsys.readouterr().err
