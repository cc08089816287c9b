"""The wheel carries every package and the rule packs (top-level rules/ → auditor/rules/*.yaml)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_carries_the_rule_packs_and_every_package(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    if result.returncode != 0 and "No module named" in result.stderr:
        pytest.skip(f"cannot build a wheel here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    wheel, = tmp_path.glob("auditor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packs = sorted(p.name for p in (ROOT / "rules").glob("*.yaml"))
    assert packs and all(f"auditor/rules/{p}" in names for p in packs), sorted(n for n in names if "rules" in n)
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "auditor").rglob("__init__.py")}
    assert all(f"{package}/__init__.py" in names for package in packages), "a package is missing from the wheel"
    assert "auditor/report/results.schema.json" in names

