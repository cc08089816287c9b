"""The real-data policy: without Debian's dataset-fashion-mnist the tests on real data skip
locally with the reason, and CI (AUDITOR_REQUIRE_DATA=1, set by .ci/run) fails instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_pytest(env_extra: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_missing_real_data_fails_ci_and_skips_locally():
    """CI (AUDITOR_REQUIRE_DATA=1) must not go green when the data package is missing."""
    test = "tests/engine/test_engine.py::test_cache_is_reused_and_invalidated"
    ci = run_pytest({"AUDITOR_PRETEND_NO_DATA": "1", "AUDITOR_REQUIRE_DATA": "1"}, test)
    assert ci.returncode == 3, ci.stdout + ci.stderr
    assert "AUDITOR_REQUIRE_DATA=1 but Debian's dataset-fashion-mnist is not installed" in ci.stdout + ci.stderr
    local = run_pytest({"AUDITOR_PRETEND_NO_DATA": "1", "AUDITOR_REQUIRE_DATA": "0"}, test, "-rs")
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    assert "apt-get install dataset-fashion-mnist" in local.stdout
