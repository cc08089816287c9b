"""The causal confirmation of a shortcut hotspot, on constructed cases with a known answer: a
spot whose occlusion changes the errors' predictions is flagged; a spot attribution merely
peaks at, with the prediction decided elsewhere, is not (the clean-model false alarm at 10k)."""

from __future__ import annotations

import torch
from conftest import FakeEngine
from auditor.checks.occlusion import flip_share, grown, located_window, transfer_share
from auditor.checks.saliency_concentration import SaliencyConcentration
from auditor.spec.checks import ConcentrationParams

SPOT = (2, 2, 3)          # where the fake errors' maps peak (FakeEngine), as (row, col, side)


class DecidingEngine(FakeEngine):
    """Test image t encodes its predicted class as a brightness 10·(c+1): at the spot
    (`causal=True`: the spot decides the prediction) or at the centre (the spot is incidental).
    The model reads the spot when it is lit, else the centre; occlusion fills with the frame (0)."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal

    def test_images(self, indices: torch.Tensor) -> torch.Tensor:
        images = torch.zeros(len(indices), 1, 16, 16)
        code = 10.0 * (self.predictions.predicted[indices] + 1).float()
        images[:, 0, 8, 8] = 10.0 * (self.predictions.labels[indices] + 1).float()
        if self.causal:
            images[:, 0, 2:5, 2:5] = code[:, None, None]
        else:
            images[:, 0, 8, 8] = code
        return images

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        spot, centre = images[:, 0, 2:5, 2:5].mean(dim=(1, 2)), images[:, 0, 8, 8]
        value = torch.where(spot > 0, spot, centre)
        return torch.nn.functional.one_hot((value / 10 - 1).round().long().clamp(0, 2), 3).float()


def test_flip_share_counts_predictions_that_change_when_the_area_is_occluded():
    errors = (~FakeEngine().predictions.correct).nonzero().flatten()
    predicted = int(FakeEngine().predictions.predicted[errors[0]])
    one = errors[:1]
    assert flip_share(DecidingEngine(causal=True), one, SPOT, predicted) == 1.0
    assert flip_share(DecidingEngine(causal=False), one, SPOT, predicted) == 0.0


def test_grown_area_is_half_a_side_larger_and_clipped():
    assert grown((2, 2, 4), 28, 28) == (0, 0, 8, 8)
    assert grown((10, 12, 4), 28, 28) == (8, 10, 16, 18)
    assert grown((24, 24, 4), 28, 28) == (22, 22, 28, 28)


def hotspots(causal: bool | None, min_flip_share: float | None):
    engine = FakeEngine() if causal is None else DecidingEngine(causal)
    params = ConcentrationParams(source="var", max_recurrence=0.1, min_group=1, min_flip_share=min_flip_share)
    errors = (~engine.predictions.correct).nonzero().flatten()      # `on: misclassified`, as the pack
    return SaliencyConcentration(params).evaluate(engine, errors)


def test_a_hotspot_that_decides_the_errors_is_confirmed_and_flagged():
    result = hotspots(causal=True, min_flip_share=0.5)
    judged = [g for g in result.extra["hotspots"] if "flip_share" in g]
    assert judged and all(g["flip_share"] == 1.0 and g["confirmed"] and g["flagged"] for g in judged)
    assert result.passed is False and result.failures


def test_a_hotspot_the_prediction_does_not_depend_on_is_not_flagged():
    unconfirmed = hotspots(causal=False, min_flip_share=0.5)
    judged = [g for g in unconfirmed.extra["hotspots"] if "flip_share" in g]
    assert judged and all(g["flip_share"] == 0.0 and not g["confirmed"] and not g["flagged"] for g in judged)
    assert unconfirmed.passed is True and unconfirmed.failures == [] and unconfirmed.value == 0.0
    # without the confirmation the same maps flag the spot
    assert hotspots(causal=None, min_flip_share=None).passed is False


def test_transfer_share_pastes_the_spot_onto_other_classes_images():
    engine = DecidingEngine(causal=True)
    p = engine.predictions
    errors = (~p.correct).nonzero().flatten()
    c = int(p.predicted[errors[0]])
    members = errors[p.predicted[errors] == c]
    assert transfer_share(engine, members, SPOT, c) == 1.0            # the pasted mark makes them class c
    assert transfer_share(DecidingEngine(causal=False), members, SPOT, c) == 0.0     # an empty spot does not


class MarkEngine:
    """Test images carry a 4×4 mark at rows 5-8, cols 6-9 (`blank`: nothing); the model's
    class-1 logit is the mark's mean brightness, so filling any part of it lowers that class."""

    def __init__(self, blank: bool = False) -> None:
        self.blank = blank

    def test_images(self, indices: torch.Tensor) -> torch.Tensor:
        images = torch.zeros(len(indices), 1, 16, 16)
        if not self.blank:
            images[:, 0, 5:9, 6:10] = 1.0
        return images

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        mark = 6 * images[:, 0, 5:9, 6:10].mean(dim=(1, 2))
        return torch.stack([torch.zeros_like(mark), mark, torch.zeros_like(mark)], dim=1)


def test_a_flagged_window_one_pixel_off_the_mark_is_moved_onto_it():
    members = torch.arange(40)
    assert located_window(MarkEngine(), members, (4, 5, 4), predicted=1) == (5, 6, 4)
    assert located_window(MarkEngine(), members, (7, 8, 4), predicted=1) == (5, 6, 4)    # two off: still found
    assert located_window(MarkEngine(blank=True), members, (4, 5, 4), predicted=1) == (4, 5, 4)   # nothing: stays
    assert located_window(MarkEngine(), members[:0], (4, 5, 4), predicted=1) == (4, 5, 4)
    assert located_window(MarkEngine(), members, (0, 0, 4), predicted=1) == (0, 0, 4)    # out of reach: stays
    assert located_window(MarkEngine(blank=True), members, (12, 12, 4), predicted=1) == (12, 12, 4)  # clipped grid
