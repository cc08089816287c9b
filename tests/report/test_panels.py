"""Panels draw the finding's evidence — the map and window the check judged, on the image it
judged — and never recompute attributions."""

from __future__ import annotations

import numpy as np
import torch

from auditor.checks import Evidence, Finding
from auditor.engine import Predictions
from auditor.report.panels import blend, diverging, evidence_tiles, heat, to_rgb, write_panels
from auditor.session import AuditSession
from auditor.spec import load_spec
from conftest import needs_fashion


class ImagesOnly:
    """An engine stand-in that serves images and labels; any attribution call is an error."""

    classes = ("a", "b", "c")

    def __init__(self) -> None:
        self.train = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        self.test = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
        self.train_labels = torch.arange(10) % 3
        self.predictions = Predictions(torch.eye(3)[[0, 1, 2, 0]], torch.tensor([0, 2, 2, 1]))

    def train_batch(self, indices):
        return self.train[indices], self.train_labels[indices]

    def test_images(self, indices):
        return self.test[indices]

    def __getattr__(self, name):
        raise AssertionError(f"the panel called engine.{name}: it must draw the evidence, not recompute")


def test_tfa_panel_shows_the_judged_training_image_its_map_and_window():
    engine = ImagesOnly()
    signed = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(3))
    evidence = Evidence("tfa", ("train", 7), magnitude=signed.abs().sum(0), signed=signed, window=(2, 3, 4),
                        related=(("test", 1, 1.0),))
    tiles = evidence_tiles(engine, Finding(1, 0.8, details={"train": 7, "window": [2, 3, 4]}, evidence=evidence))
    assert [t.caption[0] for t in tiles] == ["test #1 measured for", "train #7 value 0.8", "tfa map"]
    assert np.array_equal(tiles[1].rgb, to_rgb(engine.train[7]))
    assert np.array_equal(tiles[2].rgb, blend(to_rgb(engine.train[7]), diverging(signed.sum(0))))
    assert tiles[2].window == (2, 3, 4)


def test_saliency_panel_uses_the_rules_method_and_outlines_the_region():
    engine = ImagesOnly()
    values = torch.zeros(8, 8)
    values[0] = 1.0
    evidence = Evidence("var", ("test", 2), method="grad_cam", magnitude=values, signed=values[None], region="border")
    tiles = evidence_tiles(engine, Finding(2, 0.9, evidence=evidence))
    assert tiles[1].caption[0] == "var (grad_cam) map" and tiles[1].window is None
    plain = blend(to_rgb(engine.test[2]), heat(values))
    changed = np.any(tiles[1].rgb != plain, axis=-1)
    assert changed[0].all() and changed[:, 0].all() and not changed[3:5, 3:5].any()  # the frame, not the middle


@needs_fashion
def test_a_tfa_rules_panel_shows_the_pair_it_judged(fashion_audit, tmp_path):
    path = fashion_audit("""
    rules:
      - {name: tfa-mass, check: saliency_concentration, source: tfa, on: {indices: [0, 1, 2]}, k: 2,
         max_mass: 0.01}
    """)
    session = AuditSession(load_spec(path))
    outcome = session.run_all()[0]
    assert outcome.failures
    engine = session.engine
    before = dict(engine.stats)
    for finding in outcome.failures:
        ev = finding.evidence
        assert ev.source == "tfa" and ev.image == ("train", finding.details["train"])
        assert ev.window == tuple(finding.details["window"]) and ("test", finding.index, 1.0) in ev.related
        result = engine.tfa(torch.tensor([finding.index]), 2)[0]
        row = result.train_indices.tolist().index(ev.image[1])
        assert torch.equal(ev.magnitude, result.maps.magnitude[row]), "the evidence is not the map the check judged"
    written = write_panels(engine, outcome, tmp_path / "panels", limit=3)
    assert len(written) == 3 and all(p.stat().st_size > 0 for p in written)
    assert dict(engine.stats) == before, "drawing the panels computed attributions"


def test_a_carriers_own_map_is_not_captioned_as_measured_for_a_test_example():
    engine = ImagesOnly()
    signed = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(4))
    evidence = Evidence("occlusion", ("train", 5), method="gradient", magnitude=signed.abs().sum(0), signed=signed,
                        window=(0, 0, 2), related=(("test", 1, 1.0), ("test", 3, 1.0)))
    tiles = evidence_tiles(engine, Finding(5, 7.5, kind="train", evidence=evidence))
    assert [t.caption[0] for t in tiles] == ["train #5 value 7.5", "occlusion (gradient) map", "test #1", "test #3"]
    assert tiles[1].window == (0, 0, 2)


def test_captions_are_wrapped_to_the_tile_never_cut():
    from auditor.report.panels import CAPTION_LINES, CHARS, wrap_caption

    caption = ("occlusion (input_x_gradient)", "Ankle_boot -> Ankle_boot", "Grad-Cos 0.825")
    lines = wrap_caption(caption)
    assert all(len(line) <= CHARS for line in lines)
    assert "".join(lines).replace(" ", "") == "".join(caption).replace(" ", "")      # nothing lost
    long = wrap_caption(("x" * (CHARS * (CAPTION_LINES + 2)),))
    assert len(long) == CAPTION_LINES and long[-1].endswith("...")
