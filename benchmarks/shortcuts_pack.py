"""How the shortcut benchmarks read the shipped `shortcuts` pack: its two (test side, carriers)
rule pairs, one per base map, the pack's verdict from theirs, and what counts as a catch."""

from __future__ import annotations

RULES = ("no-patch-shortcut", "no-shortcut-carriers")   # the pair over the gradient
PAIRS = {"gradient": RULES,                               # each base map's (test side, carriers) pair in the pack
         "input_x_gradient": ("no-patch-shortcut-input-x-gradient", "no-shortcut-carriers-input-x-gradient")}


def pack_status(statuses: list[str]) -> str:
    """The pack's verdict from its pairs' (in `PAIRS` order): failed when any failed, else the
    first pair's (passed, or inconclusive when it could not judge)."""
    return "failed" if "failed" in statuses else statuses[0]


def caught(status: str, hotspots: list[dict], planted_class: str) -> bool:
    """A test-side rule caught the mark when it failed at a spot it flagged on the marked class: a
    failure on maps it cannot read, or at another class's spot, names no mark (RESULTS.md)."""
    return status == "failed" and any(h.get("flagged") and h["predicted"] == planted_class for h in hotspots)


def caught_by(outcome, planted_class: str) -> bool:
    """`caught` for a test-side rule's outcome in a session (`RuleOutcome`)."""
    return caught(outcome.status, outcome.result.extra.get("hotspots", []) if outcome.result else [], planted_class)
