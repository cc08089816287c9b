"""The Python API `auditor.audit`: the YAML runner's path with the user's own objects."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

import auditor
from auditor.errors import SpecError, TargetError
from conftest import needs_fashion

import fakes

ACCURACY = {"name": "good-enough", "check": "accuracy", "min_accuracy": 0.0}
BORDER = {"name": "no-border", "check": "region_mass", "region": "border", "max_mass": 0.0, "source": "saliency"}


def test_in_memory_model_and_data_pass_and_the_model_comes_back_as_it_was(tmp_path):
    model = fakes.linear()
    model.train()
    result = auditor.audit(model, fakes.images(), fakes.images(), rules=[ACCURACY],
                           settings={"device": "cpu", "cache_dir": str(tmp_path)})
    assert result.passed and list(result.outcomes) == ["good-enough"]
    assert result.outcomes["good-enough"].status == "passed" and result.findings == {}
    assert model.training                       # audited in eval mode, given back in train mode


def test_a_failing_rule_has_the_yaml_items_message_and_raises_an_assertion(tmp_path):
    result = auditor.audit(fakes.linear(), fakes.images(), fakes.images(), rules=[ACCURACY, BORDER],
                           settings={"device": "cpu", "cache_dir": str(tmp_path)}, name="mine")
    assert not result.passed and result.outcomes["good-enough"].status == "passed"
    message = result.message()
    assert message.startswith("rule 'no-border' failed (mine.audit)\n  check: region_mass, on: all\n")
    assert "failing examples:" in message and "good-enough" not in message
    with pytest.raises(AssertionError) as info:
        result.assert_passed()
    assert str(info.value) == message
    findings = result.findings["no-border"]
    assert len(findings) == 12 and findings[0].kind == "test" and findings[0].path is None   # in memory: no files


def test_a_mistake_in_a_rule_mapping_names_its_position_and_the_fix():
    with pytest.raises(SpecError) as info:
        auditor.audit(fakes.linear(), fakes.images(), fakes.images(),
                      rules=["shortcuts", {"name": "a", "check": "accuracy", "min_acuracy": 0.9}])
    assert str(info.value) == ("audit.audit: rules[1].min_acuracy: unknown key 'min_acuracy'\n"
                               "  fix: did you mean 'min_accuracy'?")
    with pytest.raises(SpecError, match="(?s)^audit.audit: rules.pack: unknown rule pack 'shortcut'.*did you mean 'shortcuts'"):
        auditor.audit(fakes.linear(), fakes.images(), fakes.images(), rules={"pack": "shortcut"})


def test_model_and_data_mistakes_name_the_argument(tmp_path):
    settings = {"device": "cpu", "cache_dir": str(tmp_path)}
    with pytest.raises(TargetError) as info:
        auditor.audit(fakes.linear(num_classes=4), fakes.images(), fakes.images(), rules=[ACCURACY], settings=settings)
    assert str(info.value).startswith("audit.audit: audit(model=...): the model outputs 4 logits but the data has 3")
    with pytest.raises(TargetError, match=r"audit\(test=...\): train and test have different class lists"):
        auditor.audit(fakes.linear(), fakes.images(), fakes.images(label_offset=0, num_classes=3).__class__(
            torch.zeros(3, 1, 8, 8, dtype=torch.uint8), torch.arange(3), ("x", "y", "z")), rules=[ACCURACY],
            settings=settings)


def test_image_folder_findings_carry_their_files_in_every_output(tmp_path):
    for split in ("train", "test"):
        for c in range(3):
            folder = tmp_path / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(2):
                pixels = torch.randint(0, 255, (8, 8, 3), generator=torch.Generator().manual_seed(c * 10 + i))
                Image.fromarray(pixels.to(torch.uint8).numpy()).save(folder / f"img{i}.png")
    train, test = (datasets.ImageFolder(str(tmp_path / s), transform=transforms.ToTensor()) for s in ("train", "test"))
    result = auditor.audit(fakes.linear(channels=3), train, test, rules=[BORDER],
                           settings={"device": "cpu", "cache_dir": str(tmp_path / "cache")})
    findings = result.findings["no-border"]
    assert {f.path for f in findings} == {path for path, _ in test.samples}
    assert "img0.png" in result.message()
    index = result.write_report(tmp_path / "report")
    document = json.loads(index.with_name("results.json").read_text())
    assert {f["path"] for f in document["rules"][0]["failures"]} == {path for path, _ in test.samples}
    assert "img0.png" in index.read_text()


@needs_fashion
def test_a_pack_by_name_gives_the_yaml_audits_outcomes(fashion_audit, tmp_path):
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    spec = load_spec(fashion_audit("include: [{pack: label_noise}]\n"))
    yaml_session = AuditSession(spec)
    yaml_outcomes = {o.rule.name: o for o in yaml_session.run_all()}
    target = yaml_session.engine.target
    result = auditor.audit(target.model, target.train, target.test, rules="label_noise",
                           settings={"device": "cpu", "cache_dir": str(tmp_path / "api-cache")})
    assert list(result.outcomes) == list(yaml_outcomes)
    for name, outcome in result.outcomes.items():
        yaml = yaml_outcomes[name]
        assert (outcome.status, outcome.result.value, [f.index for f in outcome.failures]) == \
            (yaml.status, yaml.result.value, [f.index for f in yaml.failures]), name


def test_usable_in_a_users_own_pytest_test(pytester):
    pytester.makepyfile(test_model="""
        import auditor, fakes

        def test_audit(tmp_path):
            rules = [{"name": "no-border", "check": "region_mass", "region": "border", "max_mass": 0.0,
                      "source": "saliency"}]
            auditor.audit(fakes.linear(), fakes.images(), fakes.images(), rules=rules,
                          settings={"device": "cpu", "cache_dir": str(tmp_path)}).assert_passed()
    """)
    pytester.syspathinsert(str(pytester.path.parent))
    import shutil
    shutil.copy(fakes.__file__, pytester.path / "fakes.py")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "AuditFailed: rule 'no-border' failed (audit.audit)" in out and "failing examples:" in out


def test_a_pack_override_works_from_python_as_in_yaml(tmp_path):
    settings = {"device": "cpu", "cache_dir": str(tmp_path)}
    override = {"pack": "label_noise", "override": {"no-mislabel-suspects": {"neighbours": 3}}}
    result = auditor.audit(fakes.linear(), fakes.images(), fakes.images(), rules=[override], settings=settings)
    assert result.outcomes["no-mislabel-suspects"].rule.params.neighbours == 3
    with pytest.raises(SpecError, match="the pack has no rule 'no-mislabel-suspect'.*\n.*did you mean 'no-mislabel-suspects'"):
        auditor.audit(fakes.linear(), fakes.images(), fakes.images(), settings=settings,
                      rules=[{"pack": "label_noise", "override": {"no-mislabel-suspect": {"neighbours": 3}}}])
