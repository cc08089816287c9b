"""The contract every registered check keeps: an empty selection measures nothing, NaN maps
and scores are findings (never a silent pass), and a normal case returns a well-formed result
whose findings carry their evidence. Also: every declared name of every registry has an
implementation."""

from __future__ import annotations

import math

import pytest
import torch

from auditor.attribution.influence import Influence, TopK
from auditor.attribution.neighbours import Neighbours
from auditor.attribution.tfa import TfaMaps
from auditor.checks import CHECKS, CheckResult
from auditor.engine import Predictions, SaliencyMaps, TfaResult
from auditor.registry import GRADIENT_COMPUTERS, PROJECTIONS, SALIENCY_METHODS
from auditor.spec import AttributionSettings, Settings
from auditor.spec.checks import CHECK_KINDS

# Parameters that make each check fail on the normal case below, and the keys it needs.
PARAMS = {"accuracy": {"min_accuracy": 0.99}, "influence_dominance": {"max_top1_share": 0.3},
          "proponent_label_agreement": {"min_agreement": 0.9}, "region_mass": {"max_mass": 0.05},
          "saliency_concentration": {"max_mass": 0.1}, "harmful_training_images": {"min_count": 1, "k": 2},
          "shortcut_carriers": {"min_group": 1, "max_recurrence": 0.1, "carrier_reference": 10, "min_z": 3.0},
          "single_image_errors": {"min_z": 3.0}, "mislabel_suspects": {"max_own_share": 0.1}}
MAP_CHECKS = ("region_mass", "saliency_concentration")
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

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """A model that reads only the spot: every class's logit is the spot's mean brightness."""
        return images[SPOT].mean(dim=(1, 2, 3))[:, None].expand(-1, 3) * torch.tensor([1.0, 2.0, 3.0])

    def attribute(self, images: torch.Tensor, classes: torch.Tensor, method: str | None = None) -> torch.Tensor:
        return images.clone()


def make(name: str):
    params = CHECK_KINDS.get(name)(**PARAMS[name])
    return CHECKS.get(name)(params)


def test_every_declared_name_has_an_implementation():
    assert set(PARAMS) == set(CHECK_KINDS.names) == set(CHECKS.names)
    for registry in (CHECKS, SALIENCY_METHODS, PROJECTIONS, GRADIENT_COMPUTERS):
        assert registry.names and not registry.missing(), (registry.kind, registry.missing())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_empty_selection_measures_nothing(name):
    result = make(name).evaluate(FakeEngine(), torch.zeros(0, dtype=torch.long))
    assert isinstance(result, CheckResult) and result.n_selected == 0 and result.failures == []


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_nan_maps_and_scores_never_pass_silently(name):
    engine = FakeEngine(nan=True)
    result = make(name).evaluate(engine, torch.arange(N_TEST))
    if name in MAP_CHECKS:
        assert len(result.failures) == N_TEST
        assert {f.details["reason"] for f in result.failures} == {"attribution is NaN or Inf"}
    elif name == "influence_dominance":
        assert {f.details["reason"] for f in result.failures} == {"no positive proponent"}
    elif name == "single_image_errors":
        assert len(result.failures) == N_TEST
        assert {f.details["reason"] for f in result.failures} == {"proponent scores are NaN"}
    elif name == "shortcut_carriers":                # NaN maps flag no hotspot: nothing is followed
        assert result.failures == [] and result.extra["note"] == "no shortcut hotspot flagged on the test side"
    else:                                   # label- and count-based checks do not read scores or maps
        assert result.n_selected > 0 and result.failures


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_normal_case_is_well_formed_and_findings_carry_evidence(name):
    check = make(name)
    result = check.evaluate(FakeEngine(), torch.arange(N_TEST))
    assert result.comparison in ("<=", ">=") and math.isfinite(result.value) and result.n_selected > 0
    assert result.failures, "the parameters above make every check fail here"
    for finding in result.failures:
        if finding.kind == "class":
            continue
        ev = finding.evidence
        assert ev is not None and ev.image[0] in ("test", "train")
        if name == "shortcut_carriers":
            assert ev.image[0] == "train" and ev.window is not None and ev.map.shape == (16, 16)
        if name in MAP_CHECKS:
            assert ev.map is not None and ev.map.shape == (16, 16) and ev.source == check.params.source
            assert (ev.window is not None) == (name == "saliency_concentration")
            assert (ev.region is not None) == (name == "region_mass")
        assert ev.to_json()["image"]["kind"] == ev.image[0]
