"""One sentence per rule that did not hold: what the check found, in the user's terms, and what
to fix. Written from the rule's own `results.json` entry (its measured numbers), never recomputed."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

Entry = dict[str, Any]
EMPTY_REASONS = ("attribution is all zeros", "attribution is NaN or Inf", "proponent scores are NaN")


def advice(entry: Entry) -> str:
    """What was found and what to fix; '' for a rule that held."""
    if entry["status"] == "passed":
        return ""
    if entry["n_selected"] == 0 or entry["value"] is None:
        return f"Nothing was measured: {entry['message']}"
    empty = _empty_maps(entry)
    if empty:
        return empty
    write = ADVICE.get(entry["check"])
    return write(entry) if write else ""


def position(window: list[int], size: list[int] | None) -> str:
    """Where a `(row, col, side)` window lies, in words (`top-left`, `centre`, ...), and in pixels."""
    row, col, side = window
    pixels = f"rows {row}–{row + side - 1}, columns {col}–{col + side - 1}"
    if not size:
        return pixels
    thirds = [min(2, int(3 * (start + side / 2) / extent)) for start, extent in ((row, size[0]), (col, size[1]))]
    vertical, horizontal = ("top", "", "bottom")[thirds[0]], ("left", "", "right")[thirds[1]]
    word = "-".join(w for w in (vertical, horizontal) if w) or "centre"
    return f"the {word} ({pixels})"


def _empty_maps(entry: Entry) -> str:
    reasons = Counter(f.get("reason") for f in entry["failures"])
    n_empty = sum(reasons[r] for r in EMPTY_REASONS)
    if not n_empty or n_empty < len(entry["failures"]) / 2:
        return ""
    what = "; ".join(f"{r} in {n} of {entry['n_selected']} examples" for r, n in reasons.items() if r in EMPTY_REASONS)
    return (f"The measured signal is missing, not concentrated: {what}. "
            "Fix the attribution before reading this rule: try another `method:`, or check that the model's "
            "output depends on its input (frozen or saturated layers).")


def _concentration(entry: Entry) -> str:
    size = entry["extra"].get("image_size")
    spots = [g for g in entry["extra"].get("hotspots", []) if g.get("flagged")]
    if spots:
        parts = [f"{g['predicted']} predictions peak at {position(g['window'], size)} "
                 f"({g['recurrence']:.0%} of {g['n_maps']} maps vs {g['reference_recurrence']:.0%} normally"
                 + (f"; filling the spot changes {g['flip_share']:.0%} of them" if "flip_share" in g else "") + ")"
                 for g in spots]
        return ("; ".join(parts) + ". The model learned a shortcut there: find the training images that carry "
                "the mark (check `shortcut_carriers`) and remove or crop it, then retrain.")
    return (f"{entry['n_failures']} predictions put more than {entry['threshold']:g} of their attribution in one "
            "small window: look at those images for marks, text or artefacts the model reads instead of the object.")


def _carriers(entry: Entry) -> str:
    size = entry["extra"].get("image_size")
    parts = [f"{g['carriers']} training images of class {g['class']} ({g['carrier_share']:.0%} of the class) "
             f"carry the spot at {position(g['window'], size)}" for g in entry["extra"].get("carriers", [])]
    return "; ".join(parts) + ": remove or crop the mark in them (the full list is in results.json), then retrain."


def _mislabels(entry: Entry) -> str:
    extra = entry["extra"]
    pairs = extra.get("suggested", [])
    swaps = "; ".join(f"{p['count']} labelled {p['label']} look like {p['suggested']}" for p in pairs[:3])
    first = entry["failures"][0] if entry["failures"] else None
    example = (f" (first: training image #{first['index']}, labelled {first['label']}, suggested {first['suggested']})"
               if first and "suggested" in first else "")
    return (f"{extra['suspects']} of {extra['n_train']} training images ({entry['value']:.1%}) are contradicted by "
            f"their {extra.get('neighbours', 'nearest')} nearest training images in the model's representation"
            f"{': ' + swaps if swaps else ''}{example}. Check each against its suggested label, strongest first; "
            "relabel or remove the wrong ones, then retrain.")


def _single(entry: Entry) -> str:
    drivers = {f.get("driver") for f in entry["failures"]} - {None}
    return (f"{entry['n_failures']} errors are each driven by one training image that stands apart "
            f"({len(drivers)} distinct images): inspect each driver (its label, a near-duplicate, an artefact) "
            "and fix or remove it.")


def _region(entry: Entry) -> str:
    return (f"{entry['n_failures']} of {entry['n_selected']} predictions put more than {entry['threshold']:g} of "
            "their attribution in the measured region: look for borders, padding, watermarks or text there "
            "in the training images, and crop or mask them.")


def _accuracy(entry: Entry) -> str:
    return (f"Accuracy {entry['value']:.3g} is below {entry['threshold']:g}: retrain or revisit the data "
            "before reading the attribution rules.")


def _dominance(entry: Entry) -> str:
    return (f"{entry['n_failures']} predictions rest mostly on one training image: review the top proponents "
            "listed with each (duplicates, mislabels, artefacts).")


def _agreement(entry: Entry) -> str:
    return (f"{entry['n_failures']} predictions are supported by training images of another class: check the "
            "labels of those proponents.")


def _harmful(entry: Entry) -> str:
    what = "oppose many correct predictions" if entry["extra"].get("mode") == "opponents" else "drive many errors"
    return f"{entry['n_failures']} training images {what}: review their labels and content, fix or remove them."


ADVICE: dict[str, Callable[[Entry], str]] = {
    "saliency_concentration": _concentration, "shortcut_carriers": _carriers, "mislabel_suspects": _mislabels,
    "single_image_errors": _single, "region_mass": _region, "accuracy": _accuracy,
    "influence_dominance": _dominance, "proponent_label_agreement": _agreement, "harmful_training_images": _harmful,
}
