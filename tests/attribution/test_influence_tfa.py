"""Grad-Cos and TFA against closed forms (linear softmax), finite differences and full argsort."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from auditor.attribution.gradients import FuncGradients, select_parameters
from auditor.attribution.influence import grad_cos_matrix, grad_cos_topk
from auditor.attribution.tfa import grad_cos_to, tfa


def linear_model(d: int = 6, c: int = 4) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, c)).double()


def closed_form_gradient(model, x, y):
    """g = ((p − e_y) ⊗ x, p − e_y) for a linear softmax model."""
    layer = model[1]
    p = torch.softmax(layer(x.flatten()), 0)
    delta = p - F.one_hot(y, p.numel()).to(p)
    return torch.cat([torch.outer(delta, x.flatten()).flatten(), delta])


def closed_form_tfa(model, x, y, g_test):
    """∇_x S for S = δᵀ(G_W x + G_b) / (‖δ‖ √(‖x‖²+1)), δ = softmax(Wx+b) − e_y."""
    W, b = model[1].weight, model[1].bias
    c, d = W.shape
    x = x.flatten()
    G_W, G_b = g_test[: c * d].view(c, d), g_test[c * d:]
    p = torch.softmax(W @ x + b, 0)
    delta = p - F.one_hot(y, c).to(p)
    J = torch.diag(p) - torch.outer(p, p)
    a = G_W @ x + G_b
    num = delta @ a
    grad_num = W.T @ J @ a + G_W.T @ delta
    r = torch.sqrt(x @ x + 1)
    nd = delta.norm()
    grad_nd = W.T @ J @ delta / nd
    den = nd * r
    return grad_num / den - num / den**2 * (r * grad_nd + nd * x / r)


def test_linear_softmax_scores_and_tfa_equal_closed_forms():
    model = linear_model()
    names = select_parameters(model)
    x = torch.randn(5, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    grads = FuncGradients(model, names).flat(x, y)
    expected = torch.stack([closed_form_gradient(model, x[i], y[i]) for i in range(5)]).detach()
    assert torch.allclose(grads, expected, atol=1e-12)
    unit = F.normalize(grads, dim=1)
    scores = grad_cos_matrix(unit, unit)
    manual = torch.tensor([[expected[i] @ expected[j] / (expected[i].norm() * expected[j].norm())
                            for j in range(5)] for i in range(5)], dtype=torch.float64)
    assert torch.allclose(scores, manual, atol=1e-12)
    # TFA of train example i for test example j (pairs (i, j) = (0,1), (2,3), (4,0))
    train, test = torch.tensor([0, 2, 4]), torch.tensor([1, 3, 0])
    maps = tfa(model, names, x[train], y[train], unit[test])
    for n in range(3):
        want = closed_form_tfa(model, x[train[n]], y[train[n]], unit[test[n]]).view(1, 2, 3)
        assert torch.allclose(maps.signed[n], want, atol=1e-10)
    assert torch.allclose(maps.magnitude, maps.signed.abs().sum(1))


def test_tfa_equals_float64_central_finite_difference_on_tiny_cnn():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 3 * 3, 4)).double().eval()
    names = select_parameters(model)
    x_train, y_train = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.tensor([2])
    x_test, y_test = torch.randn(1, 2, 6, 6, dtype=torch.float64), torch.tensor([1])
    g_test = F.normalize(FuncGradients(model, names).flat(x_test, y_test), dim=1)
    maps = tfa(model, names, x_train, y_train, g_test)
    cos = grad_cos_to(model, names)
    eps = 1e-6
    fd = torch.zeros_like(x_train[0])
    for index in range(fd.numel()):
        step = torch.zeros(fd.numel(), dtype=torch.float64)
        step[index] = eps
        step = step.view_as(fd)
        up = cos(x_train[0] + step, y_train[0], g_test[0])
        down = cos(x_train[0] - step, y_train[0], g_test[0])
        fd.view(-1)[index] = (up - down) / (2 * eps)
    assert torch.allclose(maps.signed[0], fd, atol=1e-7)


def test_smoothgrad_averages_noisy_maps_and_is_seeded():
    model = linear_model()
    names = select_parameters(model)
    x, y = torch.randn(2, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 1])
    g = F.normalize(FuncGradients(model, names).flat(x, y), dim=1)
    a = tfa(model, names, x, y, g.flip(0), samples=8, sigma=0.1, seed=5)
    b = tfa(model, names, x, y, g.flip(0), samples=8, sigma=0.1, seed=5)
    plain = tfa(model, names, x, y, g.flip(0))
    assert torch.equal(a.signed, b.signed)
    assert not torch.allclose(a.signed, plain.signed)
    # one sample with zero noise is the plain map
    zero = tfa(model, names, x, y, g.flip(0), samples=1, sigma=0.0)
    assert torch.allclose(zero.signed, plain.signed)


def test_smoothgrad_noise_of_a_pair_does_not_depend_on_the_other_pairs_in_the_call():
    model = linear_model()
    names = select_parameters(model)
    x, y = torch.randn(3, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 1, 1])
    g = F.normalize(FuncGradients(model, names).flat(x, y), dim=1).flip(0)
    together = tfa(model, names, x, y, g, samples=4, pair_seeds=[7, 8, 9], batch_size=2)
    alone = tfa(model, names, x[2:], y[2:], g[2:], samples=4, pair_seeds=[9])
    assert torch.equal(together.signed[2:], alone.signed)


def test_streaming_topk_equals_argsort_of_full_matrix():
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(7, 32), dim=1)
    train = F.normalize(torch.randn(1000, 32), dim=1)
    chunks = [(s, train[s:s + 96]) for s in range(0, 1000, 96)]
    proponents, opponents, extremes = grad_cos_topk(queries, chunks, k=5)
    full = queries @ train.T
    assert torch.equal(proponents.indices, full.argsort(dim=1, descending=True)[:, :5])
    assert torch.equal(opponents.indices, full.argsort(dim=1)[:, :5])
    assert torch.allclose(proponents.scores, full.sort(dim=1, descending=True).values[:, :5])
    assert torch.allclose(extremes.min_scores, full.min(0).values)
    assert torch.allclose(extremes.max_scores, full.max(0).values)
