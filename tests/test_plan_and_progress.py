"""Long work says what it will cost before it starts, shows progress on a terminal only, keeps
quiet under -q, and loses little when interrupted (shards of ~3% of the training set)."""

from __future__ import annotations

import re


from auditor import progress
from auditor.attribution.feature_store import default_shard_size
from auditor.cli import main
from conftest import audit

RULES = ("settings: {device: cpu, cache_dir: cache}\nrules:\n"
         "  - {name: agree, check: proponent_label_agreement, min_agreement: 0.0, k: 3}\n")


def test_shards_are_a_few_percent_of_the_training_set_and_bounded_in_bytes():
    assert default_shard_size(2000, 4096) == 64                 # 1/32 would be 63; at least 64 rows
    assert default_shard_size(60000, 4096) == 1875              # 1/32 of the set: an interrupt loses ~3%
    assert default_shard_size(10_000_000, 4096) == 4096         # at most 64 MB of float32 features
    assert default_shard_size(10_000_000, 65536) == 256


def test_featurizing_states_its_plan_on_stderr_and_is_quiet_with_q(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "QUIET", False)
    path = audit(tmp_path, RULES)
    assert main(["run", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "featurizing 12 training images: gradients of 195 parameters (all trainable), 12 at a time" in err
    assert "an interrupted run resumes from its finished shards" in err and "training images:" not in out
    (tmp_path / "audit_t.yaml").write_text(path.read_text().replace("cache_dir: cache", "cache_dir: cache2"))
    assert main(["run", str(path), "--quiet"]) == 0
    err = capsys.readouterr().err                  # quiet keeps the data warnings (the fake is near chance)
    assert "featurizing" not in err and all(line.startswith("warning: ") for line in err.splitlines())


def test_the_time_of_the_rest_is_extrapolated_from_the_first_shard(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "QUIET", False)
    path = audit(tmp_path, RULES.replace("cache_dir: cache}", "cache_dir: cache, attribution: {shard_size: 4}}"))
    assert main(["run", str(path)]) == 0
    assert re.search(r"first 4 images in [0-9.]+ s \([0-9,]+/s\): about [0-9]+ s for the other 8", capsys.readouterr().err)


def test_a_large_model_on_cpu_is_told_the_cheaper_layers(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "QUIET", False)
    monkeypatch.setattr("auditor.engine.plan.LARGE_ON_CPU", 10)     # the fake's 195 parameters
    path = audit(tmp_path, RULES)
    assert main(["run", str(path)]) == 0
    assert "`settings.attribution.layers: [1]` (its last layer) featurizes about 1x less" in capsys.readouterr().err


def test_bars_on_a_terminal_log_lines_elsewhere_and_nothing_when_quiet(monkeypatch):
    monkeypatch.setattr(progress, "QUIET", False)
    assert isinstance(progress.bar(10, "x"), progress.LogLines)      # pytest's captured stderr is not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert not progress.bar(10, "x").disable
    monkeypatch.setattr(progress, "QUIET", True)
    assert progress.bar(10, "x").disable
    monkeypatch.setattr(progress, "QUIET", False)
    with progress.quiet():                                            # one step silenced (a non-main rank)
        assert progress.bar(10, "x").disable
    with progress.quiet(False):
        assert not progress.bar(10, "x").disable
    assert not progress.QUIET                                         # the switch restored


def test_a_log_gets_a_line_at_most_every_30_seconds_with_how_far_and_the_eta(monkeypatch, capsys):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(progress, "QUIET", False)
    with progress.bar(100, "TFA maps", unit="pair") as log:
        for step in range(10):
            now[0] += 10.0                                  # 10 pairs every 10 s
            log.update(10)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["TFA maps: 30/100 pair (30%), 30 s elapsed, about 70 s left",
                     "TFA maps: 60/100 pair (60%), 60 s elapsed, about 40 s left",
                     "TFA maps: 90/100 pair (90%), 1.5 min elapsed, about 10 s left",
                     "TFA maps: done: 100 pair in 1.7 min"]
    with progress.bar(5, "quick") as log:                   # a short step prints nothing
        log.update(5)
    assert capsys.readouterr().err == ""


def test_a_run_that_dies_still_reports_the_rules_that_finished(tmp_path, capsys, monkeypatch):
    import json

    from auditor.session import AuditSession

    path = audit(tmp_path, "settings: {device: cpu, cache_dir: cache}\nrules:\n"
                           "  - {name: first, check: accuracy, min_accuracy: 0.0}\n"
                           "  - {name: second, check: accuracy, min_accuracy: 0.0}\n")
    run_rule = AuditSession.run_rule

    def dies_on_second(self, rule):
        if rule.name == "second":
            raise KeyboardInterrupt
        return run_rule(self, rule)

    monkeypatch.setattr(AuditSession, "run_rule", dies_on_second)
    assert main(["run", str(path), "--report", str(tmp_path / "report")]) == 130      # Ctrl-C
    assert "stopped at rule 'second'; the rule before it:" in capsys.readouterr().err
    document = json.loads((tmp_path / "report" / "results.json").read_text())
    assert [r["name"] for r in document["rules"]] == ["first"]


def test_every_audit_states_its_memory_plan_with_the_stages_its_rules_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "QUIET", False)
    accuracy = "settings: {device: cpu, cache_dir: cache}\nrules:\n  - {name: acc, check: accuracy, min_accuracy: 0.0}\n"
    assert main(["run", str(audit(tmp_path, accuracy))]) == 0
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("memory: "))
    assert "(activations 1,024 MB)" in line and "TFA" not in line and "per-example gradients" not in line
    in_use, peak = (int(x.replace(",", "")) for x in re.search(r"([0-9,]+) MB in use .* peak under ~([0-9,]+) MB", line).groups())
    assert peak - in_use == 1024          # the largest stage's budget, and no maps kept
    tfa = RULES + "  - {name: border, check: region_mass, source: tfa, k: 2, region: border, max_mass: 1.0}\n"
    assert main(["run", str(audit(tmp_path, tfa.replace("cache_dir: cache", "cache_dir: cache3")))]) == 0
    line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("memory: "))
    assert "per-example gradients 512 MB, TFA 2,048 MB" in line


def test_the_memory_plan_adds_the_largest_stage_and_the_kept_maps_to_what_is_in_use():
    from auditor.engine.plan import memory_plan, stated_peak_mb

    mb = 2**20
    line = memory_plan(100 * mb, {"activations": 1024 * mb, "TFA": 2048 * mb}, 10 * mb)
    assert line.endswith("100 MB in use with the model, data and predictions loaded: expect a peak under ~2,158 MB")
    assert memory_plan(None, {"activations": 1024 * mb}, 0).endswith("at most ~1,024 MB above the loaded model and data")
    assert stated_peak_mb(f"warning: x\n{line}\nrest") == 2158 and stated_peak_mb("no note here") is None


def test_the_kept_maps_count_each_source_and_method_once_at_the_most_any_rule_measures(tmp_path):
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    rules = ("settings: {device: cpu, cache_dir: cache}\nrules:\n"
             "  - {name: a, check: accuracy, min_accuracy: 0.0}\n"
             "  - {name: few, check: region_mass, source: var, on: all, sample: 5, region: border, max_mass: 1.0}\n"
             "  - {name: all, check: region_mass, source: var, on: all, region: border, max_mass: 1.0}\n"
             "  - {name: spot, check: saliency_concentration, source: var, method: input_x_gradient, on: all,\n"
             "     reference_size: 2}\n"
             "  - {name: tfa, check: region_mass, source: tfa, k: 2, on: {indices: [0, 1]}, region: border, max_mass: 1.0}\n")
    session = AuditSession(load_spec(audit(tmp_path, rules)))
    per_map = 4 * (1 * 8 * 8 + 8 * 8)            # the fakes: 12 test images of 1x8x8, 3 classes
    maps = 12 + 12 + 2 * 2       # var (the larger of 5 and 12); input x gradient with its references, at most
    #                              one per test image (12, not 12 + 2 * 3); TFA: k per example
    assert session.engine.kept_map_bytes(session.spec.rules) == maps * per_map


def test_on_an_accelerator_the_stages_count_device_memory_and_the_kept_maps_host_memory():
    from auditor.engine.plan import memory_plan

    mb = 2**20
    line = memory_plan(500 * mb, {"activations": 1024 * mb}, 10 * mb, device_in_use=300 * mb)
    assert "300 MB allocated on the device with the model loaded: expect a device peak under ~1,324 MB" in line
    assert line.endswith("host memory: expect a peak under ~510 MB")


def test_each_rule_kind_declares_the_stages_the_memory_plan_lists():
    from types import SimpleNamespace

    from auditor.engine.plan import stage_budgets
    from auditor.spec.checks import CHECK_KINDS, MislabelParams, RegionParams, SingleImageParams

    def stages(params) -> set[str]:
        return set(stage_budgets([SimpleNamespace(params=params)]))

    assert stages(MislabelParams()) == {"activations", "per-example gradients", "TFA"}       # explains 20
    assert stages(MislabelParams(explain=0)) == {"activations"}                             # the vote alone
    assert stages(SingleImageParams()) == {"activations", "per-example gradients", "TFA"}
    assert stages(RegionParams(max_mass=1.0, source="tfa")) == {"activations", "per-example gradients", "TFA"}
    assert stages(RegionParams(max_mass=1.0, source="var")) == {"activations"}
    fields = SimpleNamespace(k=1, explain=1, source="var")      # any kind's fields, read unbound
    ranking = {name for name in CHECK_KINDS.names if CHECK_KINDS.get(name).ranks_training(fields)}
    assert ranking == {"influence_dominance", "proponent_label_agreement", "harmful_training_images",
                       "single_image_errors", "mislabel_suspects"}
