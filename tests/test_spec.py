"""The audit YAML schema: valid files parse; malformed ones name file, line, field and fix."""

from __future__ import annotations

import pytest

from auditor.errors import SpecError
from auditor.spec import load_spec
from conftest import write

HEAD = """
audit: t
model: {factory: fakes:linear}
data:
  train: {factory: fakes:images}
  test: {factory: fakes:images}
"""


def audit(tmp_path, body: str = "", head: str = HEAD, name: str = "audit_t.yaml"):
    return write(tmp_path / name, head + body)


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


# (body appended to HEAD or whole document, expected line, fragments the message must contain)
MALFORMED = {
    "yaml-syntax": (HEAD + "rules:\n  - name: x\n    check: [accuracy\n", 9, ["YAML syntax error"]),
    "typo-key": (HEAD + "rules:\n  - name: x\n    check: accuracy\n    min_acuracy: 0.5\n", 9,
                 ["unknown key 'min_acuracy'", "did you mean 'min_accuracy'"]),
    "typo-top-key": (HEAD + "setings: {device: cpu}\n", 6, ["unknown key 'setings'", "did you mean 'settings'"]),
    "wrong-type": (HEAD + "rules:\n  - name: x\n    check: accuracy\n    min_accuracy: high\n", 9,
                   ["rules[0].min_accuracy", "expected a number, got 'high'"]),
    "missing-model": ("audit: t\ndata: {train: {factory: a:b}, test: {factory: a:b}}\n", 1,
                      ["missing required key 'model'"]),
    "bad-factory-form": (HEAD.replace("fakes:linear", "fakes.linear"), 2,
                         ["model.factory", "not of the form module:function"]),
    "unknown-check": (HEAD + "rules:\n  - name: x\n    check: acuracy\n    min_accuracy: 0.5\n", 8,
                      ["unknown check 'acuracy'", "did you mean 'accuracy'"]),
    "threshold-out-of-range": (HEAD + "rules:\n  - name: x\n    check: accuracy\n    min_accuracy: 1.5\n", 9,
                               ["min_accuracy", "1.5 is out of range [0.0, 1.0]"]),
    "bad-include": (HEAD + "include: [rules/nope.yaml]\n", 6, ["include 'rules/nope.yaml' not found"]),
    "duplicate-rule": (HEAD + "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1}\n"
                       "  - {name: x, check: accuracy, min_accuracy: 0.2}\n", 8, ["duplicate rule name 'x'", ":7"]),
    "bad-severity": (HEAD + "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1, severity: warning}\n", 7,
                     ["invalid value 'warning'", "did you mean 'warn'"]),
    "bad-selection": (HEAD + "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1, on: misclasified}\n", 7,
                      ["unknown selection 'misclasified'", "did you mean 'misclassified'"]),
    "tolerance-on-aggregate": (HEAD + "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1, max_failures: 2}\n", 7,
                               ["aggregate metric", "max_failures"]),
    "two-data-sources": (HEAD.replace("{factory: fakes:images}\n  test",
                                      "{factory: fakes:images, image_folder: imgs}\n  test"), 4,
                         ["exactly one data source"]),
    "duplicate-key": (HEAD + "audit: again\n", 6, ["duplicate key 'audit'"]),
    "empty-file": ("", 1, ["the file is empty"]),
    "rules-not-list": (HEAD + "rules: {name: x}\n", 6, ["expected a list of rules"]),
    "negative-batch": (HEAD + "settings: {batch_size: 0}\n", 6, ["settings.batch_size", "out of range"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_spec_names_file_line_and_field(tmp_path, case):
    text, line, fragments = MALFORMED[case]
    path = write(tmp_path / "audit_bad.yaml", text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}"), message
    for fragment in fragments:
        assert fragment in message, message


def test_include_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    path = audit(tmp_path, "include: [a.yaml]\n")
    with pytest.raises(SpecError, match=r"include cycle: audit_t.yaml -> a.yaml -> b.yaml -> a.yaml"):
        load_spec(path)


def test_on_key_is_not_read_as_yaml_boolean(tmp_path):
    path = audit(tmp_path, "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1, on: correct}\n")
    assert load_spec(path).rules[0].selection.kind == "correct"
