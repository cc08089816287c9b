"""Files written whole or not at all (the one atomic writer), and the report folder checked up front."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from auditor.errors import AuditError


def atomic_write(path: Path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write `data` (bytes, text as UTF-8, or a function writing to a binary handle) to a temp
    file beside `path`, then rename it over `path`. The temp file never outlives a failure.
    `OSError`s propagate: each caller names the setting a user should change."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_writable(folder: Path | str, option: str) -> Path:
    """Create `folder` and write a probe file in it now, so that an unwritable report folder is
    an error before any computation, not after all of it; `option` names the setting to change."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise unwritable_report(folder, exc, option) from None
    return folder


def unwritable_report(folder: Path, exc: OSError, option: str) -> AuditError:
    """The error for a report folder that cannot be written, naming the option that sets it."""
    return AuditError(f"cannot write the report directory '{folder}': {exc.strerror or exc}",
                      field="report", fix=f"choose a writable directory with {option}")
