"""What the user sees while long steps run: a bar with an ETA on stderr (featurizing, scoring,
saliency maps, TFA) when stderr is a terminal, and one-line notes (the featurization plan)
anywhere; nothing at all under `pytest -q` or `auditor run --quiet`."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm

QUIET = False     # set by `auditor run --quiet` and `pytest -q`


def bar(total: int, desc: str, unit: str = "img", enabled: bool = True) -> tqdm:
    """A progress bar with an ETA, shown only on a terminal (tqdm's `disable=None`) and when not quiet."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr,
                disable=True if (QUIET or not enabled) else None)


def note(text: str) -> None:
    """One line on stderr (not on stdout, which carries the results), unless quiet."""
    if not QUIET:
        print(text, file=sys.stderr, flush=True)
