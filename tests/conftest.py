"""Shared fixtures: real Fashion-MNIST (Debian package), a tiny trained model, audit writers, and the
fake engine the check tests read (`FakeEngine`)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

from auditor.attribution.influence import Influence, TopK
from auditor.attribution.neighbours import Neighbours
from auditor.attribution.tfa import TfaMaps
from auditor.data import DEBIAN_FASHION_MNIST
from auditor.engine import Predictions, SaliencyMaps, TfaResult
from auditor.spec import AttributionSettings, Settings

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


# --- the fake engine every check test reads: fixed predictions, influence, TFA, saliency, neighbours ---

SPOT = (slice(None), slice(None), slice(2, 5), slice(2, 5))
N_TEST, N_TRAIN, K = 12, 8, 3
# Each training image's 3 nearest others: images 2 (label c) and 6 (label a) sit among b's.
NEIGHBOURS = [[3, 6, 1], [4, 7, 2], [1, 4, 7], [0, 6, 5], [1, 7, 6], [2, 0, 3], [4, 1, 7], [1, 4, 3]]


def fixed_neighbours(table: list[list[int]], labels: torch.Tensor, n_classes: int = 3) -> Neighbours:
    """A `Neighbours` from a table of neighbour indices (similarities 0.9, 0.8, ...)."""
    indices = torch.tensor(table)
    similarity = (0.9 - 0.1 * torch.arange(indices.shape[1])).expand_as(indices).clone()
    votes = torch.nn.functional.one_hot(labels[indices], n_classes).float().mean(1)
    return Neighbours(indices, similarity, votes)


class FakeEngine:
    """Predictions, influence, TFA and saliency from fixed tensors; `nan=True` poisons maps and scores."""

    def __init__(self, nan: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.classes = ("a", "b", "c")
        self.settings = Settings()
        self.attribution = AttributionSettings()
        labels = torch.arange(N_TEST) % 3
        predicted = labels.clone()
        predicted[::4] = (labels[::4] + 1) % 3       # a third of the examples are errors
        self.predictions = Predictions(torch.nn.functional.one_hot(predicted, 3).float() * 4, labels)
        self.train_labels = torch.arange(N_TRAIN) % 3
        self.train = torch.randint(0, N_TRAIN, (N_TEST, K), generator=g)
        self.scores = torch.rand(N_TEST, K, generator=g).sort(dim=1, descending=True).values
        self.maps = torch.rand(N_TEST, 1, 16, 16, generator=g)
        self.maps[predicted != labels, :, 2:5, 2:5] += 5.0    # the errors' maps peak at one corner spot
        self.images = torch.rand(N_TRAIN, 1, 16, 16, generator=g)
        self.images[(self.train_labels == 1).nonzero().flatten()[:2], :, 2:5, 2:5] = 9.0  # two carriers of the spot
        self.scores[5] = torch.tensor([0.99, 0.2, 0.19])       # test 5 has one driver far above the rest
        self.train_losses = torch.rand(N_TRAIN, generator=g) * 0.1
        self.train_losses[[2, 6]] = torch.tensor([4.0, 6.0])    # two training images the model disagrees with
        self.cos = torch.rand(N_TRAIN, N_TEST, generator=g) * 2 - 1
        if nan:
            self.scores[:] = float("nan")
            self.maps[:] = float("nan")

    def influence(self, indices: torch.Tensor) -> Influence:
        rows = TopK(self.train[indices], self.scores[indices])
        return Influence(indices, rows, rows)

    def tfa(self, indices: torch.Tensor, k: int | None = None) -> list[TfaResult]:
        k = k or K
        return [TfaResult(int(t), self.train[t, :k], self.scores[t, :k],
                          TfaMaps(self.maps[t].expand(k, -1, -1, -1), self.maps[t, 0].abs().expand(k, -1, -1)))
                for t in indices.tolist()]

    def tfa_pairs(self, pairs: list[tuple[int, int]]) -> torch.Tensor:
        return self.maps[[t for t, _ in pairs]] * (1 + torch.tensor([j for _, j in pairs]).view(-1, 1, 1, 1))

    def grad_cos(self, train: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
        return self.cos[train][:, test]

    def neighbours(self, k: int, layer: str | None = None) -> Neighbours:
        table = [[j + N_TRAIN * (i // N_TRAIN) for j in NEIGHBOURS[i % N_TRAIN]] for i in range(len(self.train_labels))]
        return fixed_neighbours(table, self.train_labels)

    def saliency(self, indices: torch.Tensor, method: str | None = None, use_var: bool = False) -> SaliencyMaps:
        return SaliencyMaps(indices, self.maps[indices], self.maps[indices].abs().sum(1))

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[indices], self.train_labels[indices]

    def test_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Blank test images: occlusion finds nothing in them, so a flagged window stays at its peak."""
        return torch.zeros(len(indices), 1, 16, 16)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """A model that reads only the spot: every class's logit is the spot's mean brightness."""
        return images[SPOT].mean(dim=(1, 2, 3))[:, None].expand(-1, 3) * torch.tensor([1.0, 2.0, 3.0])

    def attribute(self, images: torch.Tensor, classes: torch.Tensor, method: str | None = None) -> torch.Tensor:
        return images.clone()
