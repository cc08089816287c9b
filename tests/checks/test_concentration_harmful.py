"""saliency_concentration, region_mass and harmful_training_images: constructed and real inputs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from auditor.attribution.influence import Influence, TopK
from auditor.checks.harmful_training_images import HarmfulTrainingImages, harm_counts
from auditor.checks.region_mass import RegionMass
from auditor.checks.saliency_concentration import SaliencyConcentration
from auditor.spec.checks import ConcentrationParams, HarmfulParams, RegionParams
from auditor.engine import Predictions, SaliencyMaps
from auditor.spec import AttributionSettings
from auditor.errors import SpecError
from auditor.spec.binding import Where, build
from conftest import needs_fashion


def blob(row: int, col: int, size: int = 28) -> torch.Tensor:
    m = torch.full((size, size), 0.01)
    m[row:row + 4, col:col + 4] = 1.0
    return m


def saliency_engine(maps: torch.Tensor, labels: list[int], predicted: list[int]):
    """An engine stand-in whose saliency() returns `maps[i]` for test example i; its test images
    carry a mark where their map peaks in the top-left corner, and its model reads class 'b'
    from that corner (what occlusion places a flagged window on)."""
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float()
    images = (maps[:, None] >= 1.0).float() * (maps[:, None, :1, :1] >= 1.0).float()[..., :1, :1]
    read = lambda x: torch.stack([torch.zeros(len(x)), 8 * x[:, 0, :4, :4].mean(dim=(1, 2)),  # noqa: E731
                                  torch.zeros(len(x))], dim=1)
    return SimpleNamespace(
        attribution=AttributionSettings(top_k=5), settings=SimpleNamespace(seed=0), classes=("a", "b", "c"),
        predictions=Predictions(logits, torch.tensor(labels)),
        saliency=lambda idx, method=None, use_var=False: SaliencyMaps(idx, maps[idx][:, None], maps[idx]),
        test_images=lambda idx: images[idx], logits=read,
    )


def shortcut_scenario(errors_at_corner: bool):
    """20 errors predicted 'b' and 20 correct 'b': correct maps peak at the centre."""
    corner, centre = blob(0, 0), blob(12, 12)
    errors = [corner if errors_at_corner and i < 16 else centre for i in range(20)]
    maps = torch.stack(errors + [centre] * 20)
    return saliency_engine(maps, [0] * 20 + [1] * 20, [1] * 40)


def test_recurrent_off_reference_spot_fails_and_names_its_window():
    engine = shortcut_scenario(errors_at_corner=True)
    check = SaliencyConcentration(ConcentrationParams(source="var", max_recurrence=0.35, min_group=10))
    result = check.run(engine, torch.arange(20))
    assert result.passed is False and result.value == pytest.approx(0.8)
    assert sorted(f.index for f in result.failures) == list(range(16))
    assert {tuple(f.details["window"]) for f in result.failures} == {(0, 0, 4)}
    assert result.extra["hotspots"][0]["reference_recurrence"] == 0.0


def test_errors_that_look_where_correct_examples_look_pass():
    result = SaliencyConcentration(ConcentrationParams(source="var", max_recurrence=0.35, min_group=10)).run(
        shortcut_scenario(errors_at_corner=False), torch.arange(20))
    assert result.passed is True and result.failures == [] and result.value == pytest.approx(0.0)


@pytest.mark.parametrize("n_empty,fails", [(2, False), (12, True)])
def test_empty_maps_fail_the_recurrence_only_when_they_could_change_its_verdict(n_empty, fails):
    """Errors look where correct examples look (excess 0); `n_empty` of the 20 errors have empty
    maps. All of them at one spot would add n / 20 to its excess: 0.1 is harmless at 0.35, 0.6 not."""
    engine = shortcut_scenario(errors_at_corner=False)
    maps = torch.stack([torch.zeros(28, 28) if i < n_empty else blob(12, 12) for i in range(20)] + [blob(12, 12)] * 20)
    engine.saliency = lambda idx, method=None, use_var=False: SaliencyMaps(idx, maps[idx][:, None], maps[idx])
    result = SaliencyConcentration(ConcentrationParams(source="var", max_recurrence=0.35, min_group=10)).run(
        engine, torch.arange(20))
    assert result.extra["empty_maps"] == n_empty and result.value == pytest.approx(0.0)
    if fails:
        assert sorted(f.index for f in result.failures) == list(range(n_empty))
        assert {f.details["reason"] for f in result.failures} == {"attribution is all zeros"}
        assert result.extra["empty_maps_harmless"] == 0
    else:
        assert result.failures == [] and result.extra["empty_maps_harmless"] == n_empty


def test_empty_maps_of_a_class_too_small_to_judge_do_not_fail_the_recurrence():
    """Five errors predicted 'c' (min_group 10): that class is reported unjudged whatever its maps show."""
    engine = shortcut_scenario(errors_at_corner=False)
    maps = torch.stack([blob(12, 12)] * 40 + [torch.zeros(28, 28)] * 2 + [blob(12, 12)] * 3)
    logits = torch.nn.functional.one_hot(torch.tensor([1] * 40 + [2] * 5), 3).float()
    engine.predictions = Predictions(logits, torch.tensor([0] * 20 + [1] * 20 + [0] * 5))
    engine.saliency = lambda idx, method=None, use_var=False: SaliencyMaps(idx, maps[idx][:, None], maps[idx])
    result = SaliencyConcentration(ConcentrationParams(source="var", max_recurrence=0.35, min_group=10)).run(
        engine, torch.tensor([*range(20), *range(40, 45)]))
    assert result.extra["unjudged"] == {"c": 5} and result.extra["empty_maps"] == 2
    assert result.failures == [] and result.extra["empty_maps_harmless"] == 2


def test_per_map_share_and_empty_maps_are_findings():
    maps = torch.stack([blob(3, 3), torch.zeros(28, 28), torch.full((28, 28), float("nan")), torch.ones(28, 28)])
    engine = saliency_engine(maps, [0, 0, 0, 0], [0, 0, 0, 0])
    result = SaliencyConcentration(ConcentrationParams(source="saliency", max_mass=0.5)).run(engine, torch.arange(4))
    reasons = {f.index: f.details["reason"] for f in result.failures}
    assert reasons == {0: "concentrated", 1: "attribution is all zeros", 2: "attribution is NaN or Inf"}
    assert result.extra["floor"] == pytest.approx(16 / 784) and result.extra["empty_maps"] == 2


def test_region_mass_flags_border_maps():
    frame = torch.zeros(28, 28)
    frame[0, :] = 1.0
    engine = saliency_engine(torch.stack([frame, blob(12, 12)]), [0, 0], [0, 0])
    result = RegionMass(RegionParams(max_mass=0.5)).run(engine, torch.arange(2))
    assert [f.index for f in result.failures] == [0] and result.failures[0].value == pytest.approx(1.0)


def test_region_box_is_validated_with_its_field():
    with pytest.raises(SpecError, match=r"rules\[0\]\.box: box \[0.5, 0.0, 0.2, 1.0\] is not"):
        build(RegionParams, {"max_mass": 0.5, "box": [0.5, 0.0, 0.2, 1.0]}, Where(Path("a.yaml"), 3, "rules[0]"))
    with pytest.raises(SpecError, match=r"r\.region: invalid value 'boarder'.*\n  fix: did you mean 'border'\?"):
        build(RegionParams, {"max_mass": 0.5, "region": "boarder"}, Where(Path("a.yaml"), 3, "r"))


def influence_engine(opponents: list[list[int]], proponents: list[list[int]], labels: list[int], predicted: list[int]):
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float()
    n = len(opponents)
    scores = torch.linspace(0.9, 0.1, len(opponents[0])).expand(n, -1)
    return SimpleNamespace(
        attribution=AttributionSettings(top_k=5), classes=("a", "b", "c"),
        predictions=Predictions(logits, torch.tensor(labels)), train_labels=torch.tensor([0, 1, 2] * 4),
        influence=lambda idx: Influence(idx, TopK(torch.tensor(proponents)[idx], scores[idx]),
                                        TopK(torch.tensor(opponents)[idx], -scores[idx])),
    )


def test_planted_harmful_image_is_flagged_with_the_examples_it_opposes():
    # image 7 is among the opponents of three correct examples; the others appear once each
    opponents = [[7, 1], [7, 2], [3, 7], [4, 5], [6, 8]]
    engine = influence_engine(opponents, opponents, [0, 1, 2, 0, 1], [0, 1, 2, 0, 2])
    result = HarmfulTrainingImages(HarmfulParams(mode="opponents", k=2, min_count=3)).run(engine, torch.arange(5))
    assert [(f.kind, f.index, f.value) for f in result.failures] == [("train", 7, 3.0)]
    assert result.failures[0].details["examples"] == [0, 1, 2] and result.passed is False and result.n_selected == 4
    lenient = HarmfulTrainingImages(HarmfulParams(mode="opponents", k=2, min_count=3, max_count=1))
    assert lenient.run(engine, torch.arange(5)).passed is True


def test_proponent_mode_counts_errors_only():
    proponents = [[9, 1], [9, 2], [9, 3], [9, 4]]
    engine = influence_engine(proponents, proponents, [0, 0, 0, 0], [1, 1, 0, 0])  # two errors
    result = HarmfulTrainingImages(HarmfulParams(mode="proponents", k=2, min_count=2)).run(engine, torch.arange(4))
    assert [(f.index, f.value) for f in result.failures] == [(9, 2.0)] and result.n_selected == 2
    none = HarmfulTrainingImages(HarmfulParams(mode="proponents", k=2, min_count=2)).run(engine, torch.tensor([2, 3]))
    assert none.n_selected == 0 and "no misclassified example" in none.extra["note"]


@needs_fashion
def test_shortcut_and_label_rules_on_a_real_model(tmp_path, fashion_audit):
    from auditor.session import AuditSession
    from auditor.spec import load_spec

    path = fashion_audit("""
include: [{pack: shortcuts}, {pack: localization}]
rules:
  - name: suspects
    check: harmful_training_images
    on: correct
    min_count: 20
    max_count: 1000
  - name: tfa-concentration
    check: saliency_concentration
    source: tfa
    on: {indices: [0, 1]}
    k: 2
    max_mass: 0.99
""", test_limit=300)
    session = AuditSession(load_spec(path))
    outcomes = {o.rule.name: o for o in session.run_all()}
    shortcut = outcomes["no-patch-shortcut"].result
    groups = shortcut.extra["hotspots"]
    predicted = session.engine.predictions.predicted[~session.engine.predictions.correct]
    judged = {session.engine.classes[c] for c in predicted.unique().tolist() if int((predicted == c).sum()) >= 30}
    assert shortcut.extra["window_px"] == 4 and {g["predicted"] for g in groups} <= judged
    assert all(g["n_maps"] >= 30 for g in groups)
    counted = [g["excess"] for g in groups if g.get("confirmed", True)]     # unconfirmed spots do not count
    assert shortcut.metric == "excess hotspot recurrence"
    assert shortcut.value == pytest.approx(max(counted, default=0.0), abs=1e-4)
    border = outcomes["attribution-off-border"].result
    assert 0 < border.extra["median_share"] < 0.5 and border.n_selected == 300
    suspects = outcomes["suspects"].result
    assert suspects.n_selected == int(session.engine.predictions.correct.sum()) and suspects.passed
    counts, _ = harm_counts(session.engine, session.engine.predictions.correct.nonzero().flatten(), "opponents", 5)
    assert {f.index for f in suspects.failures} == set((counts >= 20).nonzero().flatten().tolist())
    assert all(f.kind == "train" and f.value == counts[f.index] for f in suspects.failures)
    tfa = outcomes["tfa-concentration"].result
    assert tfa.extra["n_maps"] == 4 and tfa.extra["floor"] < tfa.extra["median_share"] < 1
    json.dumps(shortcut.extra)


def corner_engine(part_of_object: bool):
    """20 errors (an 'a' object, centre 0.8) predicted 'b' carry a lit corner and peak there; the
    20 correct 'b' predictions (centre 1.0, the class's own look) peak at the corner too, unlit:
    the model checks the corner for every 'b'. 20 correct 'c' have centre 0.5. A lit corner makes
    'b' on its own, or (`part_of_object`) only on an object with a bright centre, as a part would."""
    maps = torch.stack([blob(0, 0)] * 40 + [blob(12, 12)] * 20)
    images = torch.zeros(60, 1, 28, 28)
    images[:20, 0, :4, :4] = 1.0
    for rows, value in ((slice(0, 20), 0.8), (slice(20, 40), 1.0), (slice(40, 60), 0.5)):
        images[rows, 0, 12:16, 12:16] = value

    def read(x: torch.Tensor) -> torch.Tensor:
        corner, centre = x[:, 0, :4, :4].mean(dim=(1, 2)), x[:, 0, 12:16, 12:16].mean(dim=(1, 2))
        mark = 8 * corner * ((centre > 0.75).float() if part_of_object else 1.0)
        b = mark + 1.5 * (centre > 0.9).float()
        return torch.stack([torch.ones(len(x)), b, 2 * (centre < 0.75).float()], dim=1)

    engine = saliency_engine(maps, [0] * 20 + [1] * 20 + [2] * 20, [1] * 40 + [2] * 20)
    engine.test_images, engine.logits = (lambda idx: images[idx]), read
    assert torch.equal(read(images).argmax(1), engine.predictions.predicted)
    return engine


@pytest.mark.parametrize("part_of_object", [False, True])
def test_a_spot_every_prediction_of_the_class_checks_is_flagged_only_when_it_transfers(part_of_object):
    """The reference peaks where the errors do (excess 0); with it set aside, the errors' spot is a
    shortcut when filling it changes them and pasting it makes other classes' images 'b'."""
    params = ConcentrationParams(source="var", max_recurrence=0.35, min_group=10, min_flip_share=0.5,
                                 min_transfer_share=0.35)
    result = SaliencyConcentration(params).run(corner_engine(part_of_object), torch.arange(20))
    spot = result.extra["hotspots"][0]
    if part_of_object:
        assert result.passed is True and not spot["flagged"] and "reference_set_aside" not in spot
        assert spot["set_aside_tried"] == {"window": [0, 0, 4], "recurrence": 1.0, "flip_share": 1.0,
                                           "transfer_share": 0.0}       # what it measured, in the report
    else:
        assert result.passed is False and spot["flagged"] and spot["reference_set_aside"]
        assert spot["flip_share"] == 1.0 and spot["transfer_share"] == 1.0 and spot["reference_recurrence"] == 0.0
        assert "set_aside_tried" not in spot
        assert result.value == pytest.approx(1.0) and tuple(spot["window"]) == (0, 0, 4)
        assert sorted(f.index for f in result.failures) == list(range(20))
