"""The audit YAML schema: valid files parse (malformed ones: tests/test_bad_inputs.py)."""

from __future__ import annotations

from auditor.spec import load_spec
from conftest import audit, write

def test_valid_spec_parses_rules_with_lines_and_defaults(tmp_path):
    path = audit(tmp_path, """
settings: {device: cpu, batch_size: 32, attribution: {top_k: 3}}
rules:
  - name: acc
    check: accuracy
    on: misclassified
    min_accuracy: 0.5
    tags: [quality]
  - name: acc-class
    check: accuracy
    on: {class: c1}
    min_accuracy: 0.1
    severity: warn
""")
    spec = load_spec(path)
    assert spec.name == "t"
    assert spec.settings.batch_size == 32 and spec.settings.attribution.top_k == 3
    assert spec.settings.attribution.projection_dim == 4096
    first, second = spec.rules
    assert (first.name, first.where.line, first.selection.kind) == ("acc", 9, "misclassified")
    assert first.params.min_accuracy == 0.5 and first.tags == ("quality",)
    assert second.selection.kind == "class" and second.selection.value == "c1"
    assert second.severity == "warn" and second.where.line == 14


def test_include_resolves_relative_and_builtin_packs(tmp_path):
    write(tmp_path / "packs" / "extra.yaml", """
rules:
  - name: from-pack
    check: accuracy
    min_accuracy: 0.2
""")
    path = audit(tmp_path, "include: [packs/extra.yaml]\nrules: []\n")
    spec = load_spec(path)
    assert [r.name for r in spec.rules] == ["from-pack"]
    assert spec.rules[0].where.path.name == "extra.yaml" and spec.rules[0].where.line == 2


def test_on_key_is_not_read_as_yaml_boolean(tmp_path):
    path = audit(tmp_path, "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1, on: correct}\n")
    assert load_spec(path).rules[0].selection.kind == "correct"


def test_bare_true_is_the_word_where_a_choice_is_expected(tmp_path):
    path = audit(tmp_path, "settings: {attribution: {test_label: true}}\n")
    assert load_spec(path).settings.attribution.test_label == "true"


def test_a_pack_rule_is_tuned_by_override_without_copying_the_pack(tmp_path):
    path = audit(tmp_path, """
include:
  - pack: shortcuts
    override:
      no-patch-shortcut: {max_recurrence: 0.25, severity: warn}
""")
    rules = {rule.name: rule for rule in load_spec(path).rules}
    tuned, carriers = rules["no-patch-shortcut"], rules["no-shortcut-carriers"]
    assert tuned.params.max_recurrence == 0.25 and tuned.severity == "warn"
    assert tuned.params.min_flip_share == 0.5 and tuned.params.window == 0.15        # the rest as shipped
    assert tuned.where.path == path and tuned.where.line == 10                       # located at the override
    assert carriers.params.max_recurrence == 0.3 and carriers.severity == "fail"


def test_the_shortcuts_pack_judges_the_same_thresholds_under_both_base_maps(tmp_path):
    """The input x gradient pair is the gradient pair with another `method:`: retuning one without
    the other would make the pack's two maps disagree for a reason no benchmark measured."""
    import dataclasses

    rules = {rule.name: rule for rule in load_spec(audit(tmp_path, "include: [{pack: shortcuts}]\n")).rules}
    for name in ("no-patch-shortcut", "no-shortcut-carriers"):
        plain, other = rules[name], rules[f"{name}-input-x-gradient"]
        assert plain.params.method is None and other.params.method == "input_x_gradient"
        assert dataclasses.replace(other.params, method=None) == plain.params
        assert (other.check, other.selection.kind, other.severity) == (plain.check, plain.selection.kind, plain.severity)


def test_override_mistakes_point_at_the_override(tmp_path):
    from conftest import assert_spec_error

    head = "include:\n  - pack: shortcuts\n    override:\n"
    assert_spec_error(audit(tmp_path, head + "      no-patch-shortcuts: {max_recurrence: 0.25}\n"), 9,
                      ["the pack has no rule 'no-patch-shortcuts'", "did you mean 'no-patch-shortcut'"])
    assert_spec_error(audit(tmp_path, head + "      no-patch-shortcut:\n        max_recurrence: 2\n"), 10,
                      ["max_recurrence", "2"])
    assert_spec_error(audit(tmp_path, head + "      no-patch-shortcut: {check: accuracy}\n"), 9,
                      ["an override cannot change a rule's `check`"])
