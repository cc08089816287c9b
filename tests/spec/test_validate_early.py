"""What the YAML alone decides fails at `auditor validate`, at the rule's own line and field."""

from __future__ import annotations

import pytest

from auditor.cli import main
from auditor.spec import load_spec
from conftest import assert_spec_error, audit

# (rule body under `rules:`, settings/include line, expected line, expected text); conftest's
# five-line HEAD comes first, so the body starts on line 6.
CASES = {
    "k-above-top-k": ("  - name: dom\n    check: influence_dominance\n    max_top1_share: 0.5\n    k: 9\n",
                      "settings: {attribution: {top_k: 5}}\n", 11,
                      ["rules[0].k: k=9 exceeds settings.attribution.top_k=5", "raise settings.attribution.top_k to 9"]),
    "tfa-region-k-above-top-k": ("  - name: reg\n    check: region_mass\n    source: tfa\n    max_mass: 0.5\n"
                                 "    k: 6\n", "", 11, ["rules[0].k: k=6 exceeds settings.attribution.top_k=5"]),
    "tfa-concentration-k": ("  - {name: c, check: saliency_concentration, source: tfa, k: 8}\n", "", 7,
                            ["rules[0].k: k=8 exceeds"]),
    "misspelled-method": ("  - name: m\n    check: region_mass\n    max_mass: 0.5\n    method: grad_camm\n", "", 10,
                          ["rules[0].method: invalid value 'grad_camm'", "did you mean 'grad_cam'?"]),
    "method-with-tfa": ("  - name: t\n    check: saliency_concentration\n    source: tfa\n    method: gradient\n", "", 10,
                        ["rules[0].method:", "TFA maps have none"]),
    "region-and-box": ("  - name: r\n    check: region_mass\n    max_mass: 0.5\n    region: border\n"
                       "    box: [0, 0, 0.2, 0.2]\n", "", 11, ["rules[0].box: give either `region` or `box`"]),
    "misspelled-settings-saliency": ("", "settings: {attribution: {saliency: gradcam}}\n", 6,
                                     ["settings.attribution.saliency: invalid value 'gradcam'", "did you mean 'grad_cam'?"]),
    "misspelled-projection": ("", "settings: {attribution: {projection: spares}}\n", 6,
                              ["settings.attribution.projection", "did you mean 'sparse'?"]),
    "misspelled-precision": ("", "settings: {attribution: {precision: bf16}}\n", 6,
                             ["settings.attribution.precision: invalid value 'bf16'", "did you mean 'bfloat16'?"]),
    "bare-pack-file-name": ("", "include: [rules/shortcuts.yaml]\n", 6,
                            ["include 'rules/shortcuts.yaml' not found", "included as `{pack: shortcuts}`"]),
    "unknown-pack": ("", "include: [{pack: shortcut}]\n", 6, ["include[0].pack: unknown rule pack 'shortcut'",
                                                             "did you mean 'shortcuts'?"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_validate_rejects_at_the_rules_own_line(tmp_path, capsys, case):
    rules, settings, line, needles = CASES[case]
    body = settings + ("rules:\n" + rules if rules else "")
    path = audit(tmp_path, body)
    assert_spec_error(path, line, [f"{path}:{line}: ", *needles])
    assert main(["validate", str(path)]) == 2
    assert f"{path.name}:{line}:" in capsys.readouterr().err


def test_k_within_top_k_and_packs_by_name_validate(tmp_path):
    path = audit(tmp_path, "settings: {attribution: {top_k: 9}}\ninclude: [{pack: label_noise}]\n"
                           "rules:\n  - {name: dom, check: influence_dominance, max_top1_share: 0.5, k: 9}\n")
    spec = load_spec(path)
    assert [r.name for r in spec.rules] == ["no-mislabel-suspects", "no-single-image-errors", "dom"]


def test_own_rules_file_is_included_by_path_not_taken_for_a_pack(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "shortcuts.yaml").write_text(
        "rules:\n  - {name: mine, check: accuracy, min_accuracy: 0.1}\n")
    spec = load_spec(audit(tmp_path, "include: [rules/shortcuts.yaml]\n"))
    assert [r.name for r in spec.rules] == ["mine"]
