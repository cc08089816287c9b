"""Per-example results of one keyed computation, kept on disk beside the feature store.

    CACHE_DIR/results/KIND-KEY.pt    {"format", "meta", "items": [...], "fields": [(m, ...) tensors]}

A CI re-run after a change to the rules (not to the model, data or attribution settings)
finds the results of the examples it already scored and computes only the new ones. The key
hashes everything the results depend on; a damaged file is ignored (with a warning) and
rewritten, never trusted.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from auditor.attribution.feature_store import open_cache
from auditor.files import atomic_write

log = logging.getLogger(__name__)
FORMAT = "auditor-results/1"

Row = tuple[torch.Tensor, ...]


class ResultStore:
    """`item → row of tensors` for one (kind, key); every row has the same fields and shapes."""

    def __init__(self, root: Path, kind: str, key: str, meta: dict[str, Any] | None = None) -> None:
        self.path = open_cache(root) / "results" / f"{kind}-{key}.pt"
        self.key, self.meta = key, meta or {}

    def load(self) -> dict[Any, Row]:
        """The stored rows, or none when the file is absent, damaged or for another key."""
        if not self.path.is_file():
            return {}
        try:
            document = torch.load(self.path, weights_only=True)
            if document.get("format") != FORMAT or document.get("key") != self.key:
                raise ValueError("format or key differs")
            items, fields = document["items"], document["fields"]
            if any(len(field) != len(items) for field in fields):
                raise ValueError("fields and items differ in length")
        except Exception as exc:  # a damaged cache is recomputed, whatever the damage
            log.warning("result cache %s is damaged (%s); recomputing it", self.path, exc)
            return {}
        return {_item(item): tuple(field[row] for field in fields) for row, item in enumerate(items)}

    def save(self, rows: dict[Any, Row]) -> None:
        """Write all `rows` (the caller merges old and new), atomically."""
        if not rows:
            return
        items = list(rows)
        fields = [torch.stack([rows[item][f].cpu() for item in items]) for f in range(len(rows[items[0]]))]
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "key": self.key, "meta": self.meta, "items": items, "fields": fields}, buffer)
        atomic_write(self.path, buffer.getvalue())


def _item(item: Any) -> Any:
    """Items come back from torch.load as lists where they were tuples."""
    return tuple(item) if isinstance(item, list) else item
