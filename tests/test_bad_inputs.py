"""A catalogue of bad inputs: each names the file, the line, the field and the fix, and none
passes silently (DESIGN.md quality bars; issue #4). Cases are grouped by where they are caught:
the YAML (at collection), the model and data (at load), the attribution run, and the outputs.
"""

from __future__ import annotations

import pytest
import torch

from auditor.checks import CHECKS
from auditor.cli import main
from auditor.engine import Engine
from auditor.errors import AttributionError, CacheError, SpecError, TargetError
from auditor.session import AuditSession
from auditor.spec import load_spec
from auditor.target import load_target
from conftest import HEAD, assert_spec_error, audit, spec_file, write

# --- the YAML ---------------------------------------------------------------------------------

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
    "pack-rule-redefined": (HEAD + "include: [{pack: label_noise}]\nrules:\n"
                            "  - {name: no-mislabel-suspects, check: accuracy, min_accuracy: 0.1}\n", 8,
                            ["duplicate rule name 'no-mislabel-suspects'", "label_noise.yaml:",
                             "override: {no-mislabel-suspects: {key: value}}"]),
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
    "unsafe-yaml-tag": (HEAD + "rules: !!python/object/apply:os.system [echo hi]\n", 6,
                        ["unsupported YAML tag", "safe loader"]),
    "empty-baseline-policy": (HEAD + "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.1, baseline: {}}\n", 7,
                              ["rules[0].baseline", "needs `max_increase` or `no_new_failures: true`"]),
    "bad-window": (HEAD + "rules:\n  - {name: x, check: saliency_concentration, window: 2}\n", 7,
                   ["rules[0].window", "2.0 is out of range"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_spec_names_file_line_and_field(tmp_path, case):
    text, line, fragments = MALFORMED[case]
    assert_spec_error(write(tmp_path / "audit_bad.yaml", text), line, fragments)


def test_include_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "include: [b.yaml]\n")
    write(tmp_path / "b.yaml", "include: [a.yaml]\n")
    path = audit(tmp_path, "include: [a.yaml]\n")
    with pytest.raises(SpecError, match=r"include cycle: audit_t.yaml -> a.yaml -> b.yaml -> a.yaml"):
        load_spec(path)



# --- the model and the data -------------------------------------------------------------------

def target_error(tmp_path, **over) -> str:
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(TargetError) as info:
        target = load_target(load_spec(spec_file(tmp_path, **over)))
        Engine(target).predictions
    return str(info.value)


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
    "checkpoint-not-a-state-dict": ({"model": "{factory: fakes:linear, checkpoint: tensor.pt}"}, 2,
                                    ["model.checkpoint", "is not a state dict"]),
    "unknown-arch": ({"model": "{arch: torchvision.models.resnet19, num_classes: 3}"}, 2,
                     ["torchvision has no model 'resnet19'", "resnet18"]),
    "channels-differ": ({"test": "{factory: fakes:images, kwargs: {channels: 3}}"}, 5,
                        ["data.test", "the test images have 3 channels but the training images 1", "grayscale"]),
    "sizes-differ": ({"test": "{factory: fakes:images, kwargs: {size: 16}}", "model": "{factory: fakes:pooled}"}, 5,
                     ["data.test", "the test images have size 16×16 but the training images 8×8", "resize"]),
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


def saved_linear(tmp_path, wrap) -> tuple[str, dict]:
    """The fakes' linear model's weights, saved as `wrap(state)`; the file name and the state."""
    from fakes import linear

    state = linear().state_dict()
    torch.save(wrap(state), tmp_path / "wrapped.pt")
    return "wrapped.pt", state


@pytest.mark.parametrize(("wrap", "prefix"), [
    (lambda s: {f"module.{k}": v for k, v in s.items()}, "module."),                     # DataParallel
    (lambda s: {"model_state_dict": s, "epoch": 3}, None),                              # a training loop
    (lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "epoch": 3}, "model."),  # Lightning
    (lambda s: {"ema": s, "optimizer": {"lr": 0.1}}, None),                              # checkpoint_key: ema
])
def test_checkpoints_as_users_have_them_load(tmp_path, wrap, prefix):
    name, state = saved_linear(tmp_path, wrap)
    key = ", checkpoint_key: ema" if "ema" in torch.load(tmp_path / name, weights_only=True) else ""
    path = spec_file(tmp_path, model=f"{{factory: fakes:linear, checkpoint: {name}{key}}}")
    if prefix:
        with pytest.warns(UserWarning, match=f"keys start with '{prefix}'"):
            target = load_target(load_spec(path))
    else:
        target = load_target(load_spec(path))
    for k, v in state.items():
        assert torch.equal(target.model.state_dict()[k], v)


def test_a_safetensors_checkpoint_loads(tmp_path):
    from safetensors.torch import save_file

    from fakes import linear

    state = linear().state_dict()
    save_file(state, tmp_path / "model.safetensors")
    target = load_target(load_spec(spec_file(tmp_path, model="{factory: fakes:linear, checkpoint: model.safetensors}")))
    for k, v in state.items():
        assert torch.equal(target.model.state_dict()[k], v)


def test_a_safetensors_checkpoint_torch_cannot_read_says_what_to_install(tmp_path, monkeypatch):
    import pickle
    import sys

    from auditor import checkpoint

    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)          # not installed

    def older_torch(*args, **kwargs):
        raise pickle.UnpicklingError("invalid load key, '\x00'.")

    monkeypatch.setattr(checkpoint.torch, "load", older_torch)
    message = target_error(tmp_path, model="{factory: fakes:linear, checkpoint: model.safetensors}")
    assert "is a safetensors file" in message and "pip install safetensors" in message


def test_unknown_checkpoint_wrapper_lists_its_keys(tmp_path):
    name, _ = saved_linear(tmp_path, lambda s: {"ema": s, "optimizer": {"lr": 0.1}})
    message = target_error(tmp_path, model=f"{{factory: fakes:linear, checkpoint: {name}}}")
    assert "top-level keys: ema, optimizer" in message and "checkpoint_key:" in message
    missing = target_error(tmp_path, model=f"{{factory: fakes:linear, checkpoint: {name}, checkpoint_key: best}}")
    assert "has no entry 'best' (top-level keys: ema, optimizer)" in missing


@pytest.mark.parametrize(("module", "test_classes", "fragment"), [
    ("renamed", "['Tshirt', 'c1', 'c2']", "only in train: c0; only in test: Tshirt"),
    ("reordered", "['c1', 'c0', 'c2']", "same names in another order"),
])
def test_train_and_test_class_lists_must_agree(tmp_path, module, test_classes, fragment):
    write(tmp_path / f"{module}.py", f"""
        from fakes import images

        def test_set():
            data = images()
            data.classes = tuple({test_classes})
            return data
        """)
    message = target_error(tmp_path, test=f"{{factory: {module}:test_set}}")
    assert "data.test" in message and "different class lists" in message and fragment in message


@pytest.mark.parametrize(("module", "returned", "fix"), [
    ("output_object", "SimpleNamespace(logits=logits)", "returns model(x).logits"),   # a Hugging Face ModelOutput
    ("output_dict", "{'logits': logits}", "returns model(x)['logits']"),
    ("output_tuple", "(logits, logits.detach())", "e.g. model(x)[0]"),
])
def test_a_model_whose_output_carries_the_logits_is_told_how_to_hand_them_over(tmp_path, module, returned, fix):
    write(tmp_path / f"{module}.py", f"""
        from types import SimpleNamespace

        from torch import nn

        from fakes import linear

        class Carrying(nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = linear()

            def forward(self, x):
                logits = self.inner(x)
                return {returned}

        def build():
            return Carrying()
        """)
    message = target_error(tmp_path, model=f"{{factory: {module}:build}}")
    assert "must return logits of shape (batch, classes)" in message and fix in message and "factory:" in message


def test_a_model_that_takes_other_channels_than_the_images_is_told_which(tmp_path):
    message = target_error(tmp_path, model="{arch: torchvision.models.resnet18, num_classes: 3}")   # grey images
    assert "fails on a test image of shape (1, 1, 8, 8)" in message
    assert "first layer takes 3 channel(s) and the images have 1: give the images 3 channels" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(tmp_path):
    message = target_error(tmp_path, settings="{device: cuda}")
    assert "CUDA is not available" in message and "settings.device" in message




# --- the attribution run -----------------------------------------------------------------------

def engine_for(tmp_path, model: str = "{factory: fakes:linear}", attribution: str = "{}", cache: str = "cache"):
    path = spec_file(tmp_path, model=model, settings=f"{{device: cpu, cache_dir: {cache}, attribution: {attribution}}}")
    return Engine(load_target(load_spec(path)))


def test_layers_name_that_does_not_exist(tmp_path):
    engine = engine_for(tmp_path, attribution="{layers: [fc9]}")
    with pytest.raises(AttributionError) as info:
        engine.influence(torch.arange(2))
    message = str(info.value)
    assert "audit_t.yaml:6: settings.attribution.layers: the model has no module named 'fc9'" in message
    assert "fix: module names: 0, 1" in message


@pytest.mark.parametrize("attribution, fragment", [
    ("{saliency: grad_cam, grad_cam_layer: conv9}", "the model has no layer 'conv9'"),
    ("{saliency: grad_cam}", "Grad-CAM needs a convolutional layer and the model has none"),
], ids=["unknown-layer", "no-conv-layer"])
def test_grad_cam_errors_name_the_grad_cam_layer_setting(tmp_path, attribution, fragment):
    """Raised inside the attribution code without a position; the engine places them."""
    engine = engine_for(tmp_path, attribution=attribution)
    with pytest.raises(AttributionError) as info:
        engine.saliency(torch.arange(2))
    assert f"audit_t.yaml:6: settings.attribution.grad_cam_layer: {fragment}" in str(info.value)


def test_nan_parameter_gradient_is_an_error_not_a_score(tmp_path):
    engine = engine_for(tmp_path, model="{factory: fakes:nan_parameter_gradient}",
                        attribution="{gradient_computer: func}")
    with pytest.raises(AttributionError) as info:
        engine.influence(torch.arange(2))
    message = str(info.value)
    assert "audit_t.yaml:2: model: the loss gradient of test example 0 is NaN or Inf" in message
    assert "fix: check the model for operations with undefined derivatives" in message


@pytest.mark.parametrize("prepare, fragments", [
    (lambda cache: (cache.mkdir(), (cache / "notes.txt").write_text("mine")),
     ["is not an auditor cache (no auditor-cache.json) and is not empty", "choose an empty or new folder"]),
    (lambda cache: (cache.mkdir(), (cache / "auditor-cache.json").write_text("{garbage")),
     ["auditor-cache.json' is damaged or from another tool or version", "delete"]),
    (lambda cache: cache.write_text("a file"), ["cache path", "is a file", "point cache_dir at a folder"]),
], ids=["foreign-folder", "damaged-marker", "file-not-folder"])
def test_unusable_cache_directory(tmp_path, prepare, fragments):
    prepare(tmp_path / "cache")
    with pytest.raises(CacheError) as info:
        engine_for(tmp_path).index.store
    message = str(info.value)
    assert "audit_t.yaml:6: settings.cache_dir" in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_damaged_shard_is_recomputed_not_read(tmp_path):
    engine = engine_for(tmp_path, attribution="{shard_size: 4}")
    expected = engine.index.store.matrix()
    shard = engine.index.store.shard_path(1)
    shard.write_bytes(shard.read_bytes()[:40])
    again = engine_for(tmp_path, attribution="{shard_size: 4}").index.store
    assert torch.equal(again.matrix(), expected)


@pytest.mark.parametrize("model, reason", [("blind", "attribution is all zeros"),
                                           ("nan_gradient", "attribution is NaN or Inf")])
@pytest.mark.parametrize("source", ["saliency", "var"])
def test_zero_or_nan_attribution_is_a_finding(tmp_path, model, reason, source):
    path = audit(tmp_path, head=HEAD.replace("fakes:linear", f"fakes:{model}"), body=f"""
settings: {{device: cpu, cache_dir: cache}}
rules:
  - {{name: window, check: saliency_concentration, source: {source}, max_mass: 1.0, min_group: 1}}
  - {{name: border, check: region_mass, source: {source}, max_mass: 1.0}}
""")
    for outcome in AuditSession(load_spec(path)).run_all():
        assert outcome.status == "failed", outcome.message
        assert len(outcome.failures) == 12 and {f.details["reason"] for f in outcome.failures} == {reason}


# --- selections that measure nothing -----------------------------------------------------------

REQUIRED = {"accuracy": "min_accuracy: 0.5", "influence_dominance": "max_top1_share: 0.5",
            "proponent_label_agreement": "min_agreement: 0.5", "region_mass": "max_mass: 0.5",
            "saliency_concentration": "max_mass: 0.5", "harmful_training_images": "max_count: 0",
            "shortcut_carriers": "min_z: 5", "single_image_errors": "min_z: 10",
            "mislabel_suspects": "max_share: 0.01"}


def test_every_check_is_listed():
    assert set(REQUIRED) == set(CHECKS.names) and not CHECKS.missing()


@pytest.mark.parametrize("check", sorted(REQUIRED))
@pytest.mark.parametrize("on", ["{indices: []}", "misclassified"])
def test_empty_selection_never_passes(tmp_path, check, on):
    path = audit(tmp_path, head=HEAD.replace("fakes:linear", "fakes:blind"), body=f"""
settings: {{device: cpu, cache_dir: cache}}
rules:
  - {{name: strict, check: {check}, on: {on}, {REQUIRED[check]}}}
  - {{name: lenient, check: {check}, on: {on}, allow_empty: true, {REQUIRED[check]}}}
""")
    session = AuditSession(load_spec(path))
    if on == "misclassified":  # the blind model predicts class 2: labels 2 are right, others wrong
        session.engine.target.test.targets[:] = 2
    strict, lenient = session.run_all()
    assert strict.status == "failed" and "matched no test example; an empty selection cannot pass" in strict.message
    assert "Set `allow_empty: true` if that is expected" in strict.message
    assert lenient.status == "passed" and lenient.message.endswith("(allowed by allow_empty)")


# --- the outputs -------------------------------------------------------------------------------

def test_unwritable_report_directory(tmp_path, capsys):
    path = audit(tmp_path, "settings: {device: cpu, cache_dir: cache}\n"
                           "rules:\n  - {name: x, check: accuracy, min_accuracy: 0.0}\n")
    (tmp_path / "taken").write_text("a file where the report folder should go")
    assert main(["run", str(path), "--report", str(tmp_path / "taken" / "report")]) == 2
    out, error = capsys.readouterr()
    assert "report: cannot write the report directory" in error and "Not a directory" in error
    assert "fix: choose a writable directory with --report" in error
    assert out == "" and not (tmp_path / "cache").exists()          # before loading or computing anything


def test_unwritable_report_directory_stops_pytest_before_collection(pytester, tmp_path):
    (tmp_path / "taken").write_text("a file")
    result = pytester.runpytest("--audit-report", str(tmp_path / "taken" / "r"), "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot write the report directory" in result.stderr.str() and "--audit-report" in result.stderr.str()


def test_k_above_the_training_set_size_stops_before_featurizing(tmp_path, capsys):
    path = audit(tmp_path, "settings: {device: cpu, cache_dir: cache}\nrules:\n"
                           "  - {name: x, check: accuracy, min_accuracy: 0.0}\n"
                           "  - {name: dom, check: influence_dominance, max_top1_share: 0.9, k: 5}\n",
                 head=HEAD.replace("train: {factory: fakes:images}", "train: {factory: fakes:images, limit: 3}"))
    assert main(["run", str(path)]) == 2
    error = capsys.readouterr().err
    assert f"{path}:9: rules[dom].k: k=5 proponents per example, but the training set has 3 images" in error
    assert "fix: use k of at most 3" in error and not (tmp_path / "cache").exists()


def test_corrupt_baseline_file_stops_the_run(tmp_path, capsys):
    path = audit(tmp_path, "settings: {device: cpu, cache_dir: cache}\nrules:\n"
                           "  - {name: x, check: accuracy, min_accuracy: 0.0, baseline: {no_new_failures: true}}\n")
    (tmp_path / "audit_t.baseline.json").write_text('{"baseline_version": 1, "rules": {"x": {"metric": 1}}}')
    assert main(["run", str(path)]) == 2
    error = capsys.readouterr().err
    assert "audit_t.baseline.json: rules.x: baseline entry for rule 'x' is malformed" in error
    assert "fix: delete audit_t.baseline.json and run `auditor run AUDIT.yaml --update-baseline`" in error
