"""Sharded featurization: under `torchrun`, each rank computes its share of the store's shards.

    torchrun --nproc-per-node 2 -m auditor featurize AUDIT.yaml

Rank 0 prepares the store and decides which shards are missing; the missing shards are dealt
round-robin to the ranks (gloo on CPU, nccl on GPU); every rank writes its shards atomically
into the shared cache folder; rank 0 then checks that the store is complete. Without
`torchrun` (no `WORLD_SIZE`) the same code runs as a single rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from auditor.errors import AuditError
from auditor.progress import quiet

if TYPE_CHECKING:
    from auditor.attribution.feature_store import FeatureStore
    from auditor.engine import Engine


@dataclass(frozen=True)
class Rank:
    """This process's place in the job: `rank` of `world`, and its GPU index on the node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def rank_from_env() -> Rank:
    """Read torchrun's `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (a single rank when they are absent)."""
    try:
        rank = Rank(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise AuditError("RANK, WORLD_SIZE and LOCAL_RANK must be integers", field="environment",
                         fix="launch with torchrun, or unset these variables") from None
    if rank.world < 1 or not 0 <= rank.rank < rank.world:
        raise AuditError(f"rank {rank.rank} is outside a world of {rank.world}", field="environment",
                         fix="launch with torchrun, or unset RANK and WORLD_SIZE")
    return rank


def rank_device(device: str, rank: Rank) -> str:
    """Each rank gets its own GPU (`cuda:LOCAL_RANK`) when the audit runs on CUDA."""
    if rank.world > 1 and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{rank.local_rank % torch.cuda.device_count()}"
    return device


@contextmanager
def process_group(rank: Rank, device: torch.device) -> Iterator[None]:
    """A torch.distributed group for the job (nothing to do for a single rank)."""
    if rank.world == 1:
        yield
        return
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank.rank, world_size=rank.world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def share(shards: list[int], rank: Rank) -> list[int]:
    """This rank's shards: every `world`-th one, starting at its rank."""
    return shards[rank.rank::rank.world]


def featurize_sharded(engine: Engine, rank: Rank) -> tuple[FeatureStore, list[int]]:
    """Fill the training store with this job's ranks; returns the store and the shards that were missing.

    Rank 0 opens (and if stale, resets) the store before the others touch it, and its list of
    missing shards is broadcast, so every rank deals from the same list.
    """
    store = engine.index.feature_store if rank.is_main else None
    plan = [(store.key, store.missing_shards())] if rank.is_main else [None]
    if rank.world > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(plan, src=0)
        if not rank.is_main:
            store = engine.index.feature_store
    key, missing = plan[0]
    if store.key != key:
        raise AuditError(f"rank {rank.rank} built a different model or dataset than rank 0 "
                         f"(cache key {store.key} vs {key})", field="model",
                         fix="give `model.checkpoint`, and make the model and data factories deterministic")
    with quiet(not rank.is_main):                       # one rank reports
        engine.index.featurize(store, shards=share(missing, rank))
    if rank.world > 1:
        torch.distributed.barrier()
    if rank.is_main and not store.complete():
        raise AuditError(f"the feature store {store.directory} is incomplete after featurization "
                         f"(missing shards {store.missing_shards()})", field="settings.cache_dir",
                         fix="run `auditor featurize` again: completed shards are kept")
    return store, missing
