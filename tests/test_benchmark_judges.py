"""The shortcut benchmarks' judge of a catch: a failing test side counts only where it flagged a
spot on the marked class (a failure on unreadable maps, or at another class's part, names no mark)."""

from __future__ import annotations

from benchmarks.shortcuts_pack import caught, pack_status

SHIRT_SPOT = {"predicted": "Shirt", "window": [0, 1, 10], "flagged": True}


def test_a_flagged_spot_on_the_marked_class_is_a_catch():
    assert caught("failed", [SHIRT_SPOT], "Shirt")


def test_a_failure_without_a_flagged_spot_is_not_a_catch():
    unread = {"predicted": "Shirt", "window": [1, 2, 5], "flagged": False}
    assert not caught("failed", [unread], "Shirt")         # failed on all-zero maps it cannot read
    assert not caught("failed", [], "Shirt")


def test_a_spot_on_another_class_is_not_the_mark():
    assert not caught("failed", [{**SHIRT_SPOT, "predicted": "Ankle boot"}], "Shirt")


def test_a_passing_rule_catches_nothing():
    assert not caught("passed", [SHIRT_SPOT], "Shirt")


def test_the_pack_fails_when_any_pair_fails_and_is_otherwise_the_first_pairs_verdict():
    assert pack_status(["passed", "failed"]) == "failed"
    assert pack_status(["inconclusive", "passed"]) == "inconclusive"


def test_a_session_outcome_is_judged_by_its_result_s_hotspots():
    from types import SimpleNamespace

    from benchmarks.shortcuts_pack import caught_by

    flagged = SimpleNamespace(status="failed", result=SimpleNamespace(extra={"hotspots": [SHIRT_SPOT]}))
    assert caught_by(flagged, "Shirt") and not caught_by(flagged, "Pullover")
    assert not caught_by(SimpleNamespace(status="failed", result=None), "Shirt")     # no result: nothing flagged
