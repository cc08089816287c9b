"""The one "did you mean" helper: the nearest valid name to a typo, phrased as a fix; and `few`,
a list cut short for an error line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(name: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """Up to `n` valid names close to `name` (difflib ratio ≥ 0.6), best first."""
    return difflib.get_close_matches(str(name), [str(c) for c in choices], n=n, cutoff=0.6)


def did_you_mean(name: str, choices: Iterable[str], listing: str = "use one of", prefix: str = "") -> str:
    """`did you mean 'x'?` when a choice is close (or starts with `name`: `deit_tiny` →
    `deit_tiny_patch16_224`), else `<listing>: a, b, c` (at most 12 shown)."""
    choices = list(choices)
    close = (sorted((c for c in map(str, choices) if c.startswith(str(name))), key=len)[:1] if str(name) else []) \
        or nearest(name, choices)
    if close:
        return f"did you mean '{prefix}{close[0]}'?"
    shown = ", ".join(map(str, choices[:12])) + (" ..." if len(choices) > 12 else "")
    return f"{listing}: {shown or 'none'}"


def few(names: list[str], n: int = 4) -> str:
    """The first `n` names, and how many more: a list short enough for one error line."""
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
