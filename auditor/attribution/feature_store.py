"""Feature store: per-example training features on disk as memory-mapped `.npy` shards.

    CACHE_DIR/auditor-cache.json                 marks the folder as ours
    CACHE_DIR/features/KEY/manifest.json         key, n, d, shard size, what was hashed
    CACHE_DIR/features/KEY/shard-00000.npy ...   rows [i·S, (i+1)·S) as float32 (S, d)
    CACHE_DIR/probes/KEY.json                    the factored projection's gradient shares

Shards are written atomically (temp file + rename), so an interrupted featurization resumes
from the shards it completed; a truncated or foreign shard is detected and recomputed. Each
write runs on a background thread while the next shard is computed (one write in flight at
a time); `flush` waits for it and re-raises its error.
Shards are independent, so ranks of a distributed job can each write some and merge.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auditor.errors import CacheError
from auditor.files import atomic_write

log = logging.getLogger(__name__)
FORMAT = "auditor-cache/1"
FEATURES_FORMAT = "auditor-features/1"
MARKER = "auditor-cache.json"


def open_cache(root: Path) -> Path:
    """Create or validate the cache root; a non-empty folder that is not ours is an error."""
    root = Path(root)
    marker = root / MARKER
    if root.exists() and not root.is_dir():
        raise CacheError(f"cache path '{root}' is a file",
                         fix="point cache_dir at a folder")
    if root.is_dir() and any(root.iterdir()) and not marker.is_file():
        raise CacheError(f"'{root}' is not an auditor cache (no {MARKER}) and is not empty",
                         fix="choose an empty or new folder for cache_dir")
    if marker.is_file():
        try:
            ok = json.loads(marker.read_text()).get("format") == FORMAT
        except (ValueError, AttributeError):
            ok = False
        if not ok:
            raise CacheError(f"'{marker}' is damaged or from another tool or version",
                             fix=f"delete '{root}' (it is only a cache) or choose another cache_dir")
        return root
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, json.dumps({"format": FORMAT}).encode())
    except OSError as exc:
        raise CacheError(f"cannot create cache folder '{root}': {exc.strerror or exc}",
                         fix="choose a writable cache_dir") from None
    return root


SHARD_SHARE = 32             # an interrupt loses at most one shard: ~3% of the featurization ...
SHARD_BYTES = 64 * 2**20     # ... and at most 64 MB of features
SHARD_MIN = 64


def default_shard_size(n: int, dim: int) -> int:
    """Rows per shard: 1/32 of the training set, at least 64 rows, at most 64 MB (float32)."""
    return max(1, min(max(SHARD_MIN, -(-n // SHARD_SHARE)), SHARD_BYTES // (4 * max(1, dim))))


class FeatureStore:
    """The `(n, d)` feature matrix of one (model, dataset, settings) key, in shards."""

    def __init__(self, root: Path, key: str, n: int, dim: int, shard_size: int = 4096,
                 meta: dict[str, Any] | None = None) -> None:
        self.directory = open_cache(root) / "features" / key
        self.key, self.n, self.dim, self.shard_size = key, n, dim, shard_size
        self.meta = meta or {}
        self._writer: ThreadPoolExecutor | None = None
        self._pending: Future | None = None
        self._prepare()

    @property
    def n_shards(self) -> int:
        return -(-self.n // self.shard_size)

    def shard_range(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.n)

    def shard_path(self, index: int) -> Path:
        return self.directory / f"shard-{index:05d}.npy"

    def missing_shards(self) -> list[int]:
        """Shards not yet on disk in valid form (invalid ones are deleted)."""
        self.flush()
        return [i for i in range(self.n_shards) if not self._valid_shard(i)]

    def complete(self) -> bool:
        return not self.missing_shards()

    def write_shard(self, index: int, features: torch.Tensor) -> None:
        start, stop = self.shard_range(index)
        if tuple(features.shape) != (stop - start, self.dim):
            raise ValueError(f"shard {index} needs shape {(stop - start, self.dim)}, got {tuple(features.shape)}")
        rows = features.detach().to("cpu", torch.float32)
        self.flush()  # one write in flight at most: memory stays bounded if the disk is slow
        self._writer = self._writer or ThreadPoolExecutor(max_workers=1, thread_name_prefix="auditor-shard-writer")
        self._pending = self._writer.submit(self._write, index, rows.numpy())

    def flush(self) -> None:
        """Wait until the shard being written is on disk; re-raise the write's error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _write(self, index: int, rows: np.ndarray) -> None:
        # numpy releases the GIL while the bytes go to the file
        atomic_write(self.shard_path(index), lambda handle: np.save(handle, rows))

    def read_shard(self, index: int) -> np.ndarray:
        return np.load(self.shard_path(index), mmap_mode="r")

    def chunks(self, rows: int = 8192, device: torch.device | str = "cpu",
               fill: Callable[[list[int]], Iterator[tuple[int, torch.Tensor]]] | None = None,
               ) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield `(start, features (c, d))` over all rows in order, at most `rows` at a time.

        Shards on disk are read whole (one sequential read: ~14× faster than paging a memory
        map in), one at a time. Missing shards come from `fill(missing)`, which computes and
        writes them in index order: a cold run scores each shard as it is computed, holding
        one shard in memory, never reading back what it just wrote.
        """
        missing = self.missing_shards()
        if missing and fill is None:
            raise CacheError(f"feature store '{self.directory}' lacks shards {missing}", fix="featurize the training set first")
        computed = fill(missing) if missing else iter(())
        for index in range(self.n_shards):
            start, _ = self.shard_range(index)
            if index in missing:
                filled, shard = next(computed)
                assert filled == index, f"fill yielded shard {filled}, expected {index}"
            else:
                shard = torch.from_numpy(np.load(self.shard_path(index)))
            for offset in range(0, shard.shape[0], rows):
                yield start + offset, shard[offset:offset + rows].to(device, non_blocking=True)

    def matrix(self) -> torch.Tensor:
        """All features `(n, d)` in memory (for tests and small stores)."""
        return torch.cat([block for _, block in self.chunks()]) if self.n else torch.zeros(0, self.dim)

    def _prepare(self) -> None:
        manifest = self.directory / "manifest.json"
        wanted = {"format": FEATURES_FORMAT, "key": self.key, "n": self.n, "dim": self.dim,
                  "shard_size": self.shard_size, "meta": self.meta}
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text())
            except ValueError:
                found = None
            if found == json.loads(json.dumps(wanted, default=str)):
                return
            log.warning("feature cache %s is stale or damaged; rebuilding it", self.directory)
            for stale in self.directory.glob("shard-*.npy"):
                stale.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(manifest, json.dumps(wanted, indent=2, default=str).encode())

    def _valid_shard(self, index: int) -> bool:
        path = self.shard_path(index)
        if not path.is_file():
            return False
        start, stop = self.shard_range(index)
        try:
            array = np.load(path, mmap_mode="r")
            ok = array.shape == (stop - start, self.dim) and array.dtype == np.float32
        except (ValueError, OSError, EOFError):
            ok = False
        if not ok:
            log.warning("feature shard %s is truncated or damaged; recomputing it", path)
            path.unlink()
        return ok
