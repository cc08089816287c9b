"""Shared fixtures: real Fashion-MNIST (Debian package), a tiny trained model, audit writers."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

from auditor.data import DEBIAN_FASHION_MNIST

pytest_plugins = ["pytester"]

# The tests on real data skip locally when the Debian package is missing; CI sets
# AUDITOR_REQUIRE_DATA=1 (.ci/run) and then a missing package fails the run instead.
# AUDITOR_PRETEND_NO_DATA=1 lets the suite test that policy on a machine that has the data.
HAS_FASHION = DEBIAN_FASHION_MNIST.is_dir() and os.environ.get("AUDITOR_PRETEND_NO_DATA") != "1"
MISSING_DATA = "Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)"
needs_fashion = pytest.mark.skipif(not HAS_FASHION, reason=MISSING_DATA)


def pytest_sessionstart(session):
    if os.environ.get("AUDITOR_REQUIRE_DATA") == "1" and not HAS_FASHION:
        pytest.exit(f"AUDITOR_REQUIRE_DATA=1 but {MISSING_DATA}: the tests on real data would skip", returncode=3)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_spec_error(path: Path, line: int, fragments: list[str]) -> str:
    """`load_spec(path)` fails with a message starting `path:line` and containing each fragment."""
    from auditor.errors import SpecError
    from auditor.spec import load_spec

    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}"), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


HEAD = """
audit: t
model: {factory: fakes:linear}
data:
  train: {factory: fakes:images}
  test: {factory: fakes:images}
"""


def audit(tmp_path: Path, body: str = "", head: str = HEAD, name: str = "audit_t.yaml") -> Path:
    """An audit over the tiny fakes (tests/fakes.py): `head` followed by `body`."""
    return write(tmp_path / name, head + body)


BASE = {
    "model": "{factory: fakes:linear}",
    "train": "{factory: fakes:images}",
    "test": "{factory: fakes:images}",
    "settings": "{device: cpu}",
}


def spec_file(tmp_path: Path, **over: str) -> Path:
    """An audit over the fakes with some of its model/train/test/settings lines replaced."""
    fields = {**BASE, **over}
    return write(tmp_path / "audit_t.yaml", f"""
audit: t
model: {fields['model']}
data:
  train: {fields['train']}
  test: {fields['test']}
settings: {fields['settings']}
""")


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A small CNN trained for one epoch on 3,000 real Fashion-MNIST images (a few seconds)."""
    if not HAS_FASHION:
        pytest.skip(MISSING_DATA)
    from sample_audits.models import small_cnn
    from sample_audits.train import train, training_set

    torch.manual_seed(0)
    model = train(small_cnn(), training_set({"n_train": 3000}), epochs=1, seed=0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def fashion_audit(tmp_path, trained_checkpoint):
    """Write an audit over real data with the given rules block; return its path."""

    def make(rules: str, name: str = "audit_fashion.yaml", test_limit: int = 500) -> Path:
        head = f"""
        audit: fashion-test
        model:
          factory: sample_audits.models:small_cnn
          checkpoint: {trained_checkpoint}
        data:
          train: {{fashion_mnist: {{split: train, channels: 3}}, limit: 1000}}
          test: {{fashion_mnist: {{split: test, channels: 3}}, limit: {test_limit}}}
        settings: {{device: cpu, cache_dir: {tmp_path / 'cache'}}}
        """
        return write(tmp_path / name, textwrap.dedent(head) + textwrap.dedent(rules))

    return make
