"""The newcomer's case end to end on CPU with default settings (issue #17): Fashion-MNIST PNGs in
ImageFolder class folders, a red corner mark on 80% of the Shirt training images and 15% of every
class's test images, a stock torchvision ResNet-18 trained with Normalize. The shipped shortcuts
pack must fail it and name the marked files, and pass the same model trained clean; the label
noise pack must complete beside it (featurizing all 11M parameters, TFA) within 24 GB."""

from __future__ import annotations

import pytest

from conftest import needs_fashion

pytestmark = [pytest.mark.slow, needs_fashion]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from benchmarks.resnet_shortcut import audit, measure
    from sample_audits.folders import build

    out = {}
    for kind, clean, packs in (("marked", False, ["shortcuts", "label_noise"]), ("clean", True, ["shortcuts"])):
        folder = tmp_path_factory.mktemp(kind)
        result = audit(build(folder, clean=clean, n_train=2000, n_test=500, epochs=6, seed=0), packs)
        out[kind] = {**measure(folder, result["rules"]), "peak_rss_mb": result["peak_rss_mb"],
                     "seconds": result["seconds"]}
        print(kind, {k: v for k, v in out[kind].items() if k != "shirt_hotspot"})
    return out


def test_the_shortcut_rule_fails_the_marked_resnet_and_names_the_marked_files(runs):
    marked = runs["marked"]
    assert marked["shortcut_status"] == "failed" and marked["caught"] and marked["excess"] > 0.5
    assert marked["carrier_recall"] >= 0.8 and marked["carrier_precision"] >= 0.9
    assert set(marked["statuses"]) == {"no-patch-shortcut", "no-shortcut-carriers", "no-patch-shortcut-input-x-gradient",
                                       "no-shortcut-carriers-input-x-gradient", "no-mislabel-suspects",
                                       "no-single-image-errors"}          # the label-noise rules completed
    assert marked["peak_rss_mb"] < 24 * 1024


def test_the_clean_resnet_passes_with_a_margin(runs):
    clean = runs["clean"]
    assert all(status == "passed" for status in clean["statuses"].values()), clean["statuses"]
    assert runs["marked"]["excess"] - clean["excess"] > 0.3
