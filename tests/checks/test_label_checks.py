"""single_image_errors and mislabel_suspects on constructed cases with known answers, and
their scale-free verdicts: the same rule on a small and a large selection (or training set)
gives the same verdict and the same measured value."""

from __future__ import annotations

import math

import torch
from conftest import N_TEST, N_TRAIN, NEIGHBOURS, FakeEngine
from auditor.attribution.neighbours import Neighbours
from auditor.checks.mislabel_suspects import OWN_SCALE_FLOOR, MislabelSuspects, contradicted
from auditor.checks.robust import MAD_TO_SIGMA
from auditor.checks.single_image_errors import SingleImageErrors
from auditor.spec.checks import MislabelParams, SingleImageParams

ALL = torch.arange(N_TEST)


def peaked_engine() -> FakeEngine:
    """Proponent scores close together (gaps 0.01-0.03), except test 5's driver (gap 0.79)."""
    engine = FakeEngine()
    gaps = 0.01 + 0.02 * torch.rand(N_TEST, generator=torch.Generator().manual_seed(1))
    engine.scores = torch.stack([0.6 + gaps, torch.full((N_TEST,), 0.6), torch.full((N_TEST,), 0.59)], dim=1)
    engine.scores[5] = torch.tensor([0.99, 0.2, 0.19])
    return engine


def test_the_error_with_one_dominant_proponent_is_flagged_with_its_driver_and_tfa_map():
    engine = peaked_engine()
    result = SingleImageErrors(SingleImageParams(min_z=5.0)).evaluate(engine, ALL)
    gaps = engine.scores[:, 0] - engine.scores[:, 1]
    centre = gaps.median()
    scale = max(MAD_TO_SIGMA * float((gaps - centre).abs().median()), 0.01)     # the projection-noise floor
    z5 = float((gaps[5] - centre) / scale)
    assert [f.index for f in result.failures] == [5]
    finding = result.failures[0]
    assert finding.value == z5 and finding.details["driver"] == int(engine.train[5, 0])
    assert finding.evidence.image == ("train", int(engine.train[5, 0])) and finding.evidence.source == "tfa"
    assert torch.equal(finding.evidence.signed, engine.maps[5])           # TFA of the driver for this error
    assert finding.evidence.related[0] == ("test", 5, 1.0)
    assert result.value == z5 and result.comparison == "<="


def test_single_image_verdicts_do_not_depend_on_the_selection_size():
    small, large = peaked_engine(), peaked_engine()
    repeat = 4
    large.train, large.scores = small.train.repeat(repeat, 1), small.scores.repeat(repeat, 1)
    large.maps = small.maps.repeat(repeat, 1, 1, 1)
    large.predictions = type(small.predictions)(small.predictions.logits.repeat(repeat, 1),
                                                small.predictions.labels.repeat(repeat))
    params = SingleImageParams(min_z=5.0)
    a = SingleImageErrors(params).evaluate(small, ALL)
    b = SingleImageErrors(params).evaluate(large, torch.arange(N_TEST * repeat))
    assert a.value == b.value
    assert sorted({f.index % N_TEST for f in b.failures}) == [f.index for f in a.failures]
    assert len(b.failures) == repeat * len(a.failures)


def test_suspects_are_the_images_their_neighbours_contradict_ranked_and_explained():
    engine = FakeEngine()
    result = MislabelSuspects(MislabelParams(max_own_share=0.1)).evaluate(engine, ALL)
    assert [f.index for f in result.failures] == [6, 2]      # both: no neighbour shares the label; loss 6 first
    assert result.value == 2 / N_TRAIN and result.passed is False and result.n_selected == N_TRAIN
    six = result.failures[0]
    assert six.kind == "train" and six.value == 1.0
    assert six.details["label"] == "a" and six.details["suggested"] == "b" and six.details["suggested_share"] == 1.0
    assert six.details["own_prob"] == round(math.exp(-6.0), 6)
    assert [r["train"] for r in six.details["resembles"]] == NEIGHBOURS[6]
    assert {r["label"] for r in six.details["resembles"]} == {"b"}
    p = engine.predictions
    label = int(engine.train_labels[6])
    errors = [t for t in range(N_TEST) if not p.correct[t] and int(p.predicted[t]) == label and engine.cos[6, t] > 0]
    opposed = sorted((t for t in range(N_TEST) if p.correct[t] and engine.cos[6, t] < 0), key=lambda t: engine.cos[6, t])
    assert set(six.details["drives"]) == set(errors) and six.details["opposes"] == opposed[:3]
    strongest = max(errors + opposed[:3], key=lambda t: abs(float(engine.cos[6, t])))
    assert six.evidence.related[0][0:2] == ("test", strongest)
    assert [r[:2] for r in six.evidence.related[1:4]] == [("train", j) for j in NEIGHBOURS[6]]
    assert torch.equal(six.evidence.signed, engine.tfa_pairs([(strongest, 6)])[0])
    assert result.extra["suggested"] == [{"label": "a", "suggested": "b", "count": 1},
                                         {"label": "c", "suggested": "b", "count": 1}]


def test_an_image_needs_a_suggested_label_not_only_a_lonely_one():
    """Own share 0 but the neighbours split between two other labels: no suggestion, no suspect."""
    engine = FakeEngine()
    engine.train_labels = engine.train_labels.clone()
    engine.train_labels[7] = 2                         # image 6's neighbours now read b, b, c
    result = MislabelSuspects(MislabelParams(max_own_share=0.1, min_suggested_share=0.7)).evaluate(engine, ALL)
    assert 6 not in [f.index for f in result.failures]
    at = MislabelSuspects(MislabelParams(max_own_share=0.1, min_suggested_share=2 / 3)).evaluate(engine, ALL)
    assert 6 in [f.index for f in at.failures]         # a share equal to the bound counts


def test_beyond_explain_a_suspect_keeps_its_neighbours_as_evidence():
    engine = FakeEngine()
    result = MislabelSuspects(MislabelParams(max_own_share=0.1, explain=1)).evaluate(engine, ALL)
    second = result.failures[1]
    assert second.evidence.source == "neighbours" and "drives" not in second.details
    assert [r[1] for r in second.evidence.related] == NEIGHBOURS[2]


def test_suspect_share_at_its_threshold_passes_and_does_not_depend_on_the_training_set_size():
    small, large = FakeEngine(), FakeEngine()
    large.train_losses, large.train_labels = small.train_losses.repeat(3), small.train_labels.repeat(3)
    large.cos = small.cos.repeat(3, 1)
    share = 2 / N_TRAIN
    for engine in (small, large):
        at = MislabelSuspects(MislabelParams(max_own_share=0.1, max_share=share)).evaluate(engine, ALL)
        assert at.value == share and at.passed is True
        below = MislabelSuspects(MislabelParams(max_own_share=0.1, max_share=share * 0.99)).evaluate(engine, ALL)
        assert below.passed is False


def test_a_proponent_that_stands_apart_but_does_not_explain_the_error_is_no_driver():
    """Natural errors reach high gap z-scores with leads of 0.3-0.8: not a single-image error."""
    engine = peaked_engine()
    engine.scores[7] = torch.tensor([0.75, 0.5, 0.49])               # lead (0.75 − 0.5) / (1 − 0.5) = 0.5
    flagged = SingleImageErrors(SingleImageParams(min_z=5.0, min_lead=0.8)).evaluate(engine, ALL)
    assert [f.index for f in flagged.failures] == [5] and flagged.failures[0].details["lead"] == round(0.79 / 0.8, 4)
    at = SingleImageErrors(SingleImageParams(min_z=5.0, min_lead=0.5)).evaluate(engine, ALL)
    assert sorted(f.index for f in at.failures) == [5, 7]            # a lead equal to min_lead counts


def test_gaps_below_the_projection_noise_do_not_make_a_driver():
    """An under-trained model's errors have near-equal proponents (gaps ~0.003): a gap of 0.05
    is then a huge z-score on the raw MAD, but within 5 noise floors (0.01) it is not flagged."""
    engine = peaked_engine()
    engine.scores[:, 0] = engine.scores[:, 1] + 0.003 * torch.rand(N_TEST, generator=torch.Generator().manual_seed(2))
    engine.scores[7] = torch.tensor([0.95, 0.90, 0.89])
    result = SingleImageErrors(SingleImageParams(min_z=5.0, min_lead=0.0)).evaluate(engine, ALL)
    assert 7 not in {f.index for f in result.failures}


def votes_of(rows: list[list[float]]) -> Neighbours:
    index = torch.zeros(len(rows), 1, dtype=torch.long)
    return Neighbours(index, index.float(), torch.tensor(rows, dtype=torch.float32))


def test_an_image_is_contradicted_when_either_representation_contradicts_its_label():
    labels = torch.tensor([0, 0, 1])
    mid = votes_of([[0.0, 1.0], [0.5, 0.5], [0.0, 1.0]])
    head = votes_of([[1.0, 0.0], [0.05, 0.95], [0.0, 1.0]])
    both = Neighbours.averaged([mid, head])
    shares = MislabelParams(max_own_share=0.1, max_own_z=None)
    # 0: the mid-depth vote contradicts it (the head, having memorised it, does not); 1: the head's
    # vote does; 2: its label agrees with both. The averaged vote alone would list neither 0 nor 1.
    assert contradicted(both, labels, shares)[0].tolist() == [True, True, False]
    assert contradicted(mid, labels, shares)[0].tolist() == [True, False, False]
    assert ((both.own_share(labels) <= 0.1) & (both.suggested(labels)[1] >= 0.5)).tolist() == [False, False, False]


def lower_median(values: list[float]) -> float:
    return sorted(values)[(len(values) - 1) // 2]


def reference_z(own: list[float], labels: list[int]) -> list[float]:
    """Each own share against its class's median and MAD, one image at a time (floored scale)."""
    out = []
    for value, label in zip(own, labels):
        members = [o for o, c in zip(own, labels) if c == label]
        centre = lower_median(members)
        scale = max(MAD_TO_SIGMA * lower_median([abs(o - centre) for o in members]), OWN_SCALE_FLOOR)
        out.append((value - centre) / scale)
    return out


def test_a_relabelled_cluster_in_a_tight_class_is_listed_by_its_class_z_not_a_broad_class_member():
    """Class 0 agrees tightly (own share 1.0), so three of its images at 0.4 (a cluster of relabels
    that vouch for one another) stand 4 spreads below it; class 1 is broad (shares 0.2-1.0), so
    its member at 0.4 is ordinary there. Only the absolute cut would list neither."""
    own = [1.0] * 12 + [0.4] * 3 + [0.2, 0.4, 0.6, 0.8, 1.0, 0.3, 0.5, 0.7, 0.9, 1.0]
    labels = [0] * 15 + [1] * 10
    rows = [[o, 1 - o] if c == 0 else [1 - o, o] for o, c in zip(own, labels)]
    neighbours, y = votes_of(rows), torch.tensor(labels)
    found, z = contradicted(neighbours, y, MislabelParams(max_own_share=0.1, max_own_z=-4.0))
    assert torch.allclose(z, torch.tensor(reference_z(own, labels)), atol=1e-5)
    assert found.nonzero().flatten().tolist() == [12, 13, 14]
    assert z[12] == -4.0                                          # at the bound: listed
    assert not contradicted(neighbours, y, MislabelParams(max_own_share=0.1, max_own_z=-4.01))[0].any()
    assert not contradicted(neighbours, y, MislabelParams(max_own_share=0.1, max_own_z=None))[0].any()
