"""What the user sees while long steps run: a bar with an ETA on stderr (featurizing, scoring,
saliency maps, TFA) when stderr is a terminal, plain lines at most every `LOG_SECONDS` where it
is not (CI logs), and one-line notes (the featurization plan) anywhere; nothing at all under
`pytest -q` or `auditor run --quiet`."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

QUIET = False     # the one switch: `set_quiet` (`auditor run --quiet`, `pytest -q`), `quiet()` for a step
LOG_SECONDS = 30.0


def set_quiet(value: bool) -> None:
    """Print nothing from now on (`value`), or print again."""
    global QUIET
    QUIET = value


@contextmanager
def quiet(when: bool = True) -> Iterator[None]:
    """Nothing printed inside when `when` (a rank other than the first, `--no-progress`); the switch restored after."""
    before = QUIET
    set_quiet(before or when)
    try:
        yield
    finally:
        set_quiet(before)


def bar(total: int, desc: str, unit: str = "img") -> Any:
    """A progress bar with an ETA on a terminal; `LogLines` where stderr is not one; nothing when quiet."""
    if QUIET:
        return tqdm(total=total, disable=True)
    if not sys.stderr.isatty():
        return LogLines(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, leave=False, file=sys.stderr)


class LogLines:
    """Progress for a log: one plain line (what, how far, elapsed, ETA) at most every
    `LOG_SECONDS`, and a closing line for a step that printed any."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.start = self.last = time.monotonic()
        self.printed = False

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= LOG_SECONDS and self.done < self.total:
            self.last = now
            elapsed = now - self.start
            eta = elapsed * (self.total - self.done) / max(self.done, 1)
            self._line(f"{self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
                       f"{clock(elapsed)} elapsed, about {clock(eta)} left")

    def close(self) -> None:
        if self.printed:
            self._line(f"done: {self.done:,} {self.unit} in {clock(time.monotonic() - self.start)}")
            self.printed = False

    def _line(self, text: str) -> None:
        print(f"{self.desc}: {text}", file=sys.stderr, flush=True)
        self.printed = True


def clock(seconds: float) -> str:
    """`42 s`, `3.5 min`, `1.2 h`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def note(text: str) -> None:
    """One line on stderr (not on stdout, which carries the results), unless quiet."""
    if not QUIET:
        print(text, file=sys.stderr, flush=True)
