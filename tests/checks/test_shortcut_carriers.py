"""shortcut_carriers on constructed cases with a known answer: the planted carriers and only
they are named; occlusion uses the image's own background; verdicts do not depend on size."""

from __future__ import annotations

import torch

from auditor.checks.occlusion import frame_median, occlude
from auditor.checks.robust import robust_z
from auditor.checks.shortcut_carriers import ShortcutCarriers
from auditor.spec.checks import CarrierParams
from conftest import N_TRAIN, FakeEngine
PARAMS = CarrierParams(min_group=1, max_recurrence=0.1, carrier_reference=10, min_z=3.0)


def planted(engine: FakeEngine) -> set[int]:
    return set((engine.images[:, 0, 2:5, 2:5] == 9.0).all(dim=(1, 2)).nonzero().flatten().tolist())


def test_names_exactly_the_planted_carriers_with_the_window():
    engine = FakeEngine()
    result = ShortcutCarriers(PARAMS).evaluate(engine, torch.arange(12))
    assert {f.index for f in result.failures} == planted(engine) == {1, 4}
    assert all(f.kind == "train" and f.details["label"] == "b" for f in result.failures)
    group, = [g for g in result.extra["carriers"] if g["carriers"]]
    assert group["class"] == "b" and group["carrier_share"] == round(2 / 3, 4) and result.value == group["carrier_share"]
    window = tuple(group["window"])
    assert all(f.evidence.window == window and f.details["window"] == list(window) for f in result.failures)
    assert result.passed is False


def test_tolerated_share_passes():
    params = CarrierParams(min_group=1, max_recurrence=0.1, carrier_reference=10, min_z=3.0, max_carrier_share=0.7)
    assert ShortcutCarriers(params).evaluate(FakeEngine(), torch.arange(12)).passed is True


def test_verdict_and_share_do_not_depend_on_the_training_set_size():
    small, large = FakeEngine(), FakeEngine()
    large.images = small.images.repeat(3, 1, 1, 1)
    large.train_labels = small.train_labels.repeat(3)
    a = ShortcutCarriers(PARAMS).evaluate(small, torch.arange(12))
    b = ShortcutCarriers(PARAMS).evaluate(large, torch.arange(12))
    assert a.passed == b.passed and a.value == b.value
    assert {f.index % N_TRAIN for f in b.failures} == {f.index for f in a.failures} and len(b.failures) == 3 * len(a.failures)


def test_occlusion_fills_the_window_with_the_frame_median():
    image = torch.full((1, 3, 8, 8), 0.2)
    image[0, :, 3:6, 3:6] = 1.0
    image[0, 0, 0, 0] = 0.9                       # one odd frame pixel does not move the median
    out = occlude(image, (3, 3, 3))
    assert torch.allclose(frame_median(image), torch.full((1, 3), 0.2))
    assert torch.allclose(out[0, :, 3:6, 3:6], torch.full((3, 3, 3), 0.2)) and torch.equal(out[0, :, :3], image[0, :, :3])


def test_robust_z_uses_median_and_mad_with_a_floor():
    reference = torch.tensor([1.0, 2.0, 3.0, 4.0, 100.0])
    z = robust_z(torch.tensor([3.0, 3.0 + 1.4826]), reference, floor=1e-6)
    assert torch.allclose(z, torch.tensor([0.0, 1.0]))
    assert torch.allclose(robust_z(torch.tensor([1.0]), torch.zeros(5), floor=0.5), torch.tensor([2.0]))
