"""The candidate mislabel signals `benchmarks/label_errors.py` measures (issue #24), each against a
slow, obviously-correct reference: explicit per-example autograd, per-row float64 solves, loops."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.label_errors import class_similarity, head_gradients, self_influence, vote_scores


def test_head_gradients_equal_autograd_of_each_examples_loss_and_margin():
    """Loss gradients of the last layer, and the (negated) margin log p − log(1 − p)'s, by one
    backward per example."""
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 4)
    hidden, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 1, 0])
    loss_grad, margin_grad = head_gradients(hidden, head(hidden).detach(), labels)
    for i in range(len(hidden)):
        logits = head(hidden[i:i + 1])
        for value, found in ((F.cross_entropy(logits, labels[i:i + 1]), loss_grad[i]),
                             (-(logits.log_softmax(1)[0, labels[i]] - torch.log1p(-logits.softmax(1)[0, labels[i]])),
                              margin_grad[i])):
            weight, bias = torch.autograd.grad(value, [head.weight, head.bias], retain_graph=True)
            reference = torch.cat([weight, bias[:, None]], 1).flatten()
            assert torch.allclose(found, reference, atol=1e-5)


def test_self_influence_equals_a_float64_solve_per_row():
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(30, 8))
    gram = phi.T @ phi
    gram += 1e-3 * np.trace(gram) / len(gram) * np.eye(len(gram))
    reference = [float(row @ np.linalg.solve(gram, row)) for row in phi]
    assert np.allclose(self_influence(torch.tensor(phi, dtype=torch.float32)).numpy(), reference, rtol=1e-4)


def test_class_similarity_is_the_mean_cosine_to_the_k_nearest_of_each_class():
    torch.manual_seed(1)
    features, labels = torch.randn(25, 6), torch.arange(25) % 3
    found = class_similarity(features, labels, 4, 3)
    unit = F.normalize(features, dim=1)
    for i in range(25):
        for c in range(3):
            others = [float(unit[i] @ unit[j]) for j in range(25) if j != i and labels[j] == c]
            assert abs(float(found[i, c]) - float(np.mean(sorted(others)[-4:]))) < 1e-5


def test_vote_scores_loop_over_classes():
    own = np.array([0.1, 0.5, 0.9, 0.3, 0.7])
    support = np.array([0.8, 0.4, 0.1, 0.6, 0.2])
    labels = np.array([0, 0, 0, 1, 1])
    found = vote_scores(own, support, labels)
    assert np.allclose(found["vote_sum"], -own + 0.5 * support)
    medians = [np.median(own[labels == labels[i]]) for i in range(5)]
    assert np.allclose(found["vote_class_relative"], [-(own[i] - medians[i]) + 0.5 * support[i] for i in range(5)])


def test_own_class_opposition_is_minus_the_mean_grad_cos_with_each_correct_prediction_of_its_label():
    from types import SimpleNamespace

    from benchmarks.label_errors import own_class_opposition

    torch.manual_seed(2)
    train, test = F.normalize(torch.randn(7, 5), dim=1), F.normalize(torch.randn(9, 5), dim=1)
    test_labels, correct = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]), torch.tensor([1, 1, 0, 1, 1, 1, 1, 0, 1]).bool()
    engine = SimpleNamespace(predictions=SimpleNamespace(correct=correct, labels=test_labels), classes=("a", "b", "c"),
                             train_labels=torch.tensor([0, 1, 2, 0, 1, 2, 0]),
                             index=SimpleNamespace(test_features=lambda rows: test[rows]))
    found = own_class_opposition(engine, train)
    for i in range(7):
        mine = [float(train[i] @ test[z]) for z in range(9) if correct[z] and test_labels[z] == engine.train_labels[i]]
        assert abs(float(found[i]) + np.mean(mine)) < 1e-6


def test_stored_self_influence_is_each_rows_leverage_under_the_shipped_kernel():
    from types import SimpleNamespace

    from benchmarks.label_errors import stored_self_influence

    torch.manual_seed(3)
    features = F.normalize(torch.randn(20, 6), dim=1)
    store = SimpleNamespace(dim=6, chunks=lambda: iter([(0, features[:8]), (8, features[8:])]))
    engine = SimpleNamespace(index=SimpleNamespace(store=store),
                             settings=SimpleNamespace(attribution=SimpleNamespace(damping=1.0)))
    u = features.double().numpy()
    gram = u.T @ u
    gram += np.trace(gram) / len(gram) * np.eye(len(gram))
    reference = [float(row @ np.linalg.solve(gram, row)) for row in u]
    assert np.allclose(stored_self_influence(engine).numpy(), reference, rtol=1e-5)


def test_cleaned_vote_counts_each_listed_neighbour_as_its_suggested_label():
    from auditor.attribution.neighbours import Neighbours, nearest_neighbours
    from benchmarks.label_errors import cleaned_vote

    torch.manual_seed(4)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    parts = [nearest_neighbours(torch.randn(8, 3), labels, 3, 2) for _ in range(2)]
    neighbours = Neighbours.averaged(parts)
    listed = torch.tensor([False, False, False, False, False, False, True, True])
    suggested = neighbours.suggested(labels)[0]
    found = cleaned_vote(neighbours, labels, listed, 2)
    for i in range(8):
        votes = torch.zeros(2)
        for part in parts:
            for j in part.indices[i].tolist():
                votes[int(suggested[j]) if listed[j] else int(labels[j])] += 1 / (3 * len(parts))
        assert torch.allclose(found.votes[i], votes)
