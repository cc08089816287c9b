"""`auditor featurize` under torchrun: 2 CPU ranks (gloo) write the same store as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from auditor.distributed import Rank, rank_from_env, share
from auditor.errors import AuditError
from conftest import needs_fashion

TESTS = Path(__file__).resolve().parent


def test_missing_shards_are_dealt_round_robin():
    missing = [0, 2, 3, 5, 8]
    parts = [share(missing, Rank(r, 3)) for r in range(3)]
    assert parts == [[0, 5], [2, 8], [3]] and sorted(sum(parts, [])) == missing


def test_rank_environment_is_validated(monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AuditError, match="rank 2 is outside a world of 2"):
        rank_from_env()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert rank_from_env() == Rank(0, 1, 0)


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@needs_fashion
def test_two_gloo_ranks_write_the_single_process_store(fashion_audit, tmp_path):
    path = fashion_audit("settings: {device: cpu, cache_dir: CACHE, attribution: {shard_size: 128}}\n")
    text = path.read_text()
    text = text[:text.index("settings:")] + text[text.rindex("settings:"):]
    single, sharded = tmp_path / "audit_single.yaml", tmp_path / "audit_sharded.yaml"
    single.write_text(text.replace("CACHE", "single"))
    sharded.write_text(text.replace("CACHE", "sharded"))

    run([sys.executable, "-m", "auditor", "featurize", str(single), "--no-progress"], tmp_path)
    launched = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "auditor", "featurize", str(sharded), "--no-progress"], tmp_path)
    assert "8 shards, 0 already cached, 8 computed by 2 rank(s)" in launched.stdout

    a = sorted((tmp_path / "single").glob("features/*/shard-*.npy"))
    b = sorted((tmp_path / "sharded").glob("features/*/shard-*.npy"))
    assert len(a) == len(b) == 8 and [p.parent.name for p in a] == [p.parent.name for p in b]
    merged, whole = np.concatenate([np.load(p) for p in b]), np.concatenate([np.load(p) for p in a])
    np.testing.assert_allclose(merged, whole, atol=1e-6)
