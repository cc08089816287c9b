"""Nearest neighbours in the model's representation against an explicit loop, the layer the
representation is read from, and the hook that records it (removed on exit)."""

from __future__ import annotations

import torch
from torch import nn

from auditor.attribution import neighbours as nb
from auditor.attribution.neighbours import (Neighbours, RecordRepresentation, feature_maps, nearest_neighbours,
                                            pooled, representation_layers)


def reference(features: torch.Tensor, labels: torch.Tensor, k: int, n_classes: int):
    """One row at a time: cosine to every other row (float64), the k largest, their label shares."""
    x = features.double()
    rows, votes = [], torch.zeros(len(x), n_classes, dtype=torch.float64)
    for i in range(len(x)):
        sims = [(float(x[i] @ x[j] / (x[i].norm() * x[j].norm())), j) for j in range(len(x)) if j != i]
        top = sorted(sims, key=lambda sj: -sj[0])[:k]
        rows.append([j for _, j in top])
        for _, j in top:
            votes[i, int(labels[j])] += 1.0 / k
    return rows, votes


def test_neighbours_and_votes_equal_an_explicit_loop_in_any_chunking(monkeypatch):
    g = torch.Generator().manual_seed(0)
    features, labels = torch.randn(40, 6, generator=g), torch.randint(0, 4, (40,), generator=g)
    expected_rows, expected_votes = reference(features, labels, 5, 4)
    for budget in (2**24, 40 * 7):                  # all rows at once, and 7 rows at a time
        monkeypatch.setattr(nb, "SIMILARITY_BUDGET", budget)
        found = nearest_neighbours(features, labels, 5, 4)
        assert found.indices.tolist() == expected_rows
        assert torch.allclose(found.votes.double(), expected_votes)
        assert (found.similarity[:, :-1] >= found.similarity[:, 1:]).all()


def test_own_share_and_suggested_label():
    labels = torch.tensor([0, 1, 1, 1, 2])
    found = nearest_neighbours(torch.tensor([[1.0, 0], [1, 0.1], [1, 0.2], [1, -0.1], [0, 1]]), labels, 3, 3)
    assert found.own_share(labels)[0] == 0.0                    # image 0 sits among the 1s
    label, share = found.suggested(labels)
    assert int(label[0]) == 1 and float(share[0]) == 1.0
    assert (found.indices != torch.arange(5)[:, None]).all()    # never its own neighbour


def test_k_above_the_set_size_uses_every_other_image():
    labels = torch.tensor([0, 0, 1])
    found = nearest_neighbours(torch.randn(3, 2), labels, 25, 2)
    assert found.indices.shape == (3, 2)


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 64, 3))


def test_the_default_representations_are_the_mid_depth_feature_map_and_the_head_input():
    model, images = cnn(), torch.rand(2, 1, 8, 8)
    assert feature_maps(model, images) == ["0", "1", "2", "3"]
    assert representation_layers(model, images) == [("2", False), ("5", True)]
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 3))
    assert representation_layers(mlp, images) == [("3", True)]               # no feature map: the head alone
    assert representation_layers(mlp, images, "1") == [("1", False)]
    assert representation_layers(mlp, images, "nope") == []


def test_averaged_votes_are_the_mean_of_each_representations_votes_with_the_first_ones_neighbours():
    labels = torch.tensor([0, 1, 1, 0])
    first = nearest_neighbours(torch.randn(4, 3), labels, 2, 2)
    second = nearest_neighbours(torch.randn(4, 5), labels, 2, 2)
    both = Neighbours.averaged([first, second])
    assert torch.equal(both.indices, first.indices) and torch.equal(both.similarity, first.similarity)
    for i in range(4):
        for c in range(2):
            assert float(both.votes[i, c]) == (float(first.votes[i, c]) + float(second.votes[i, c])) / 2
    assert Neighbours.averaged([first]) is first


def test_the_recorded_representation_is_the_pooled_output_and_the_hook_is_removed():
    model, images = cnn(), torch.rand(3, 1, 8, 8)
    with RecordRepresentation(model[2]) as record, torch.no_grad():
        model(images)
        value = record.take()
    expected = torch.nn.functional.adaptive_avg_pool2d(model[:3](images), 2).flatten(1)
    assert torch.allclose(value, expected.detach()) and value.shape == (3, 16)
    with RecordRepresentation(model[5], use_input=True) as record, torch.no_grad():
        model(images)
        assert torch.allclose(record.take(), model[:5](images))
    assert not model[2]._forward_hooks and not model[5]._forward_pre_hooks
    assert pooled(torch.ones(2, 3)).shape == (2, 3)
