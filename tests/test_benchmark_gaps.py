"""The label benchmark's robustness summary: each row's shortfall from the best row of each run,
checked on a hand-computed case."""

from __future__ import annotations

from benchmarks.label_errors import gaps


def test_shortfalls_from_the_best_row_of_each_run():
    runs = {"a": {"rows": {"ours": {"auc": 0.9}, "loss": {"auc": 0.8}, "ours_without_class_z": {"auc": 1.0}}},
            "b": {"rows": {"ours": {"auc": 0.7}, "loss": {"auc": 0.75}, "peer": {"failed": "x"}}}}
    out = gaps(runs, "auc")
    assert out == {"ours": (0.05, 0.025, 2), "loss": (0.1, 0.05, 2)}     # the row without the z-cut is not a rival
    assert list(out) == ["ours", "loss"]                                   # smallest largest shortfall first
