"""The report tells a reviewer what to do: a what-to-fix sentence per rule (also for empty maps),
a legend for the map colours, panel links, a grid of failing training images, and the same
findings briefly in the Markdown step summary."""

from __future__ import annotations

import json
import re

import torch

import auditor
from auditor.report.advice import advice, position
from auditor.report.html import markdown_summary, render_index

import fakes


def entry(**over) -> dict:
    base = {"name": "r", "check": "saliency_concentration", "status": "failed", "selection": "all", "file": "/a/x.yaml",
            "line": 3, "message": "m", "value": 0.6, "threshold": 0.3, "comparison": "<=", "n_selected": 100,
            "n_failures": 2, "failures": [], "extra": {}}
    return {**base, **over}


def test_positions_read_as_words_and_pixels():
    assert position([0, 0, 4], [28, 28]) == "the top-left (rows 0–3, columns 0–3)"
    assert position([12, 12, 4], [28, 28]) == "the centre (rows 12–15, columns 12–15)"
    assert position([24, 12, 4], [28, 28]) == "the bottom (rows 24–27, columns 12–15)"
    assert position([0, 24, 4], None) == "rows 0–3, columns 24–27"


def test_shortcut_advice_names_class_spot_and_fix():
    hotspot = {"predicted": "Shirt", "n_maps": 778, "window": [0, 3, 4], "recurrence": 0.88,
               "reference_recurrence": 0.29, "flip_share": 0.97, "flagged": True}
    text = advice(entry(extra={"hotspots": [hotspot], "image_size": [28, 28]}))
    assert text.startswith("Shirt predictions peak at the top-left (rows 0–3, columns 3–6) (88% of 778 maps")
    assert "filling the spot changes 97% of them" in text and "remove or crop it" in text
    carriers = {"class": "Shirt", "window": [0, 3, 4], "carriers": 41, "carrier_share": 0.2}
    text = advice(entry(check="shortcut_carriers", extra={"carriers": [carriers], "image_size": [28, 28]}))
    assert text.startswith("41 training images of class Shirt (20% of the class) carry the spot at the top-left")


def test_empty_maps_put_the_reason_in_the_headline_not_a_region():
    failures = [{"kind": "test", "index": i, "value": 0.0, "reason": "attribution is all zeros"} for i in range(3)]
    text = advice(entry(check="region_mass", failures=failures, n_failures=3, n_selected=3))
    assert text.startswith("The measured signal is missing, not concentrated: attribution is all zeros in 3 of 3 examples.")
    assert advice(entry(status="passed")) == ""
    assert advice(entry(n_selected=0, value=None, message="selection matched nothing")).startswith("Nothing was measured")


def test_html_has_advice_legends_and_panel_links(tmp_path):
    failure = {"kind": "train", "index": 5, "value": 1.0, "panel": "panels/r-train-5.png",
               "evidence": {"source": "tfa", "method": None, "window": [0, 0, 4], "region": None}}
    rule = entry(failures=[failure], advice="Fix the <mark>.")
    html = render_index({"audit": "a", "file": "f", "created": "now", "passed": False, "rules": [rule]}, {}, tmp_path)
    assert "<p class='advice'>Fix the &lt;mark&gt;.</p>" in html
    assert "signed map: blue pixels speak against the prediction, red for it" in html
    assert "the window or region the check measured" in html
    assert "<a href='panels/r-train-5.png'>r-train-5.png</a>" in html and "<td>tfa</td>" in html


def test_step_summary_lists_what_to_fix_and_the_first_items_with_files():
    failures = [{"kind": "test", "index": i, "value": 1.0, "label": "Bag", "predicted": "Shirt",
                 "path": f"data/test/Bag/{i}.png"} for i in range(7)]
    document = {"audit": "a", "passed": False,
                "rules": [entry(failures=failures, n_failures=7, advice="Crop the mark."), entry(name="ok", status="passed")]}
    text = markdown_summary(document, None)
    assert "**r** (failed): Crop the mark." in text
    assert "- test #0 (Bag → Shirt) `data/test/Bag/0.png`" in text and "- … and 2 more" in text
    assert "**ok**" not in text


def test_failing_training_images_get_a_grid_panel_first(tmp_path):
    images = fakes.images(n=12)
    images.images[:] = 0
    images.images[:6, :, :, :4] = 200 + images.images[:6, :, :, :4] % 50      # two looks: bright left, bright right
    images.images[6:, :, :, 4:] = 200
    images.targets[:] = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])   # one of each look mislabelled
    result = auditor.audit(fakes.blind(), images, fakes.images(), rules=[
        {"name": "suspects", "check": "mislabel_suspects", "neighbours": 3, "max_share": 0.0}],
        settings={"device": "cpu", "cache_dir": str(tmp_path / "cache")})
    assert len(result.findings["suspects"]) > 1
    index = result.write_report(tmp_path / "report")
    grid = tmp_path / "report" / "panels" / "suspects-grid.png"
    assert grid.is_file()
    html = index.read_text()
    assert html.index("suspects-grid.png") < html.index("suspects-train-")       # the grid comes first
    document = json.loads(index.with_name("results.json").read_text())
    assert document["rules"][0]["advice"].startswith(f"{len(result.findings['suspects'])} of 12 training images")
    assert re.search(r"<p class='advice'>\d+ of 12 training images", html)
