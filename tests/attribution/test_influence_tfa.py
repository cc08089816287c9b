"""Grad-Cos and TFA against closed forms (linear softmax), finite differences and full argsort."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from auditor.attribution.gradients import FuncGradients, select_parameters
from auditor.attribution.influence import grad_cos_matrix, grad_cos_topk
from auditor.attribution.tfa import image_seed, pair_noise, tfa


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


def reference_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One example's loss gradient over every parameter, by plain autograd (no torch.func)."""
    loss = F.cross_entropy(model(x.unsqueeze(0)), y.view(1))
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def reference_grad_cos(model: nn.Module, x: torch.Tensor, y: torch.Tensor, test: torch.Tensor) -> float:
    """Grad-Cos written out: dot product over the product of norms, each by hand."""
    g = reference_gradient(model, x, y)
    return float(sum(g * test) / (sum(g * g) ** 0.5 * sum(test * test) ** 0.5))


def central_difference(f, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """∂f/∂x by central differences, one coordinate at a time (float64)."""
    out = torch.zeros_like(x)
    for index in range(x.numel()):
        step = torch.zeros(x.numel(), dtype=x.dtype)
        step[index] = eps
        out.view(-1)[index] = (f(x + step.view_as(x)) - f(x - step.view_as(x))) / (2 * eps)
    return out


def tiny_cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 3 * 3, 4)).double().eval()


def test_tfa_equals_finite_differences_of_an_independent_grad_cos():
    """Independent of the code under test: gradients by an explicit autograd call per example,
    the cosine by hand, differenced in float64. A Grad-Cos without its normalisation, or with
    its sign flipped, fails here."""
    model = tiny_cnn()
    names = select_parameters(model)
    x_train, y_train = torch.randn(2, 2, 6, 6, dtype=torch.float64), torch.tensor([2, 0])
    x_test, y_test = torch.randn(2, 2, 6, 6, dtype=torch.float64), torch.tensor([1, 0])
    tests = torch.stack([reference_gradient(model, x_test[i], y_test[i]) for i in range(2)])
    maps = tfa(model, names, x_train, y_train, tests / tests.norm(dim=1, keepdim=True))
    for n in range(2):
        want = central_difference(lambda x: reference_grad_cos(model, x, y_train[n], tests[n]), x_train[n])
        assert torch.allclose(maps.signed[n], want, atol=1e-7), n
        assert want.abs().max() > 1e-3                            # not trivially zero


def test_smoothgrad_noise_is_sigma_times_each_images_value_range():
    """The SmoothGrad map is the mean of plain maps at x + σ·(max − min)·ε_k, ε_k the pair's own noise."""
    model = linear_model()
    names = select_parameters(model)
    x = torch.randn(2, 1, 2, 3, dtype=torch.float64) * torch.tensor([1.0, 3.0]).view(2, 1, 1, 1) + 5.0
    y = torch.tensor([0, 1])
    g = F.normalize(FuncGradients(model, names).flat(x, y), dim=1).flip(0)
    samples, sigma, seeds = 6, 0.2, [11, 12]
    maps = tfa(model, names, x, y, g, samples=samples, sigma=sigma, pair_seeds=seeds)
    for n in range(2):
        spread = sigma * float(x[n].max() - x[n].min())
        noise = pair_noise(seeds[n], samples, x.shape[1:]).double()
        want = torch.stack([closed_form_tfa(model, x[n] + spread * noise[k], y[n], g[n]) for k in range(samples)])
        assert torch.allclose(maps.signed[n], want.mean(0).view(1, 2, 3), atol=1e-10), n


def test_each_training_image_has_its_own_noise_seed_stable_across_processes():
    seeds = {image_seed(0, j) for j in range(25)} | {image_seed(1, j) for j in range(25)}
    assert len(seeds) == 50, "two training images (or two seeds) share their SmoothGrad noise"
    # a fixed function of (seed, train): this value is what every run and process draws
    assert image_seed(0, 7) == 17100206056140587


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
    together = tfa(model, names, x, y, g, samples=4, pair_seeds=[7, 8, 9], rows=3)   # chunks cross pairs
    alone = tfa(model, names, x[2:], y[2:], g[2:], samples=4, pair_seeds=[9])
    # the same noise; rows chunked differently (3 at a time together, 4 alone) may round differently on some CPUs
    assert torch.allclose(together.signed[2:], alone.signed, rtol=1e-12, atol=1e-15)


def test_streaming_topk_equals_argsort_of_full_matrix():
    torch.manual_seed(0)
    queries = F.normalize(torch.randn(7, 32), dim=1)
    train = F.normalize(torch.randn(1000, 32), dim=1)
    chunks = [(s, train[s:s + 96]) for s in range(0, 1000, 96)]
    proponents, opponents = grad_cos_topk(queries, chunks, k=5)
    full = queries @ train.T
    assert torch.equal(proponents.indices, full.argsort(dim=1, descending=True)[:, :5])
    assert torch.equal(opponents.indices, full.argsort(dim=1)[:, :5])
    assert torch.allclose(proponents.scores, full.sort(dim=1, descending=True).values[:, :5])
    assert torch.allclose(opponents.scores, full.sort(dim=1).values[:, :5])


def test_tfa_maps_do_not_depend_on_how_many_rows_run_at_once():
    model = linear_model()
    names = select_parameters(model)
    x, y = torch.randn(3, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 1, 1])
    g = F.normalize(FuncGradients(model, names).flat(x, y), dim=1).flip(0)
    one_by_one = tfa(model, names, x, y, g, samples=5, rows=1)      # what memory pressure falls back to
    torch.testing.assert_close(one_by_one.signed, tfa(model, names, x, y, g, samples=5).signed)


def test_rows_one_at_a_time_equal_the_vmapped_rows(monkeypatch):
    """Large models run TFA rows one after another (fewer than MIN_VMAP_ROWS fit): same maps."""
    from auditor.attribution import tfa as tfa_module

    model = linear_model()
    names = select_parameters(model)
    x, y = torch.randn(3, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 1, 1])
    g = F.normalize(FuncGradients(model, names).flat(x, y), dim=1).flip(0)
    vmapped = tfa(model, names, x, y, g, samples=4, pair_seeds=[7, 8, 9])
    monkeypatch.setattr(tfa_module, "MIN_VMAP_ROWS", 10**9)
    looped = tfa(model, names, x, y, g, samples=4, pair_seeds=[7, 8, 9])
    assert torch.allclose(looped.signed, vmapped.signed, rtol=1e-10, atol=1e-12)


def test_pairs_sharing_a_noisy_training_image_share_its_forward_and_equal_their_maps_alone(monkeypatch):
    """Rows one at a time: pairs with the same image, label and seed run one forward and first
    backward per noise sample and one double backward per test; each map is the one it has alone."""
    from auditor.attribution import tfa as tfa_module

    monkeypatch.setattr(tfa_module, "MIN_VMAP_ROWS", 10**9)
    model = tiny_cnn()
    names = select_parameters(model)
    image = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    x, y = torch.cat([image, image, torch.randn_like(image), image]), torch.tensor([1, 1, 1, 0])
    g = F.normalize(torch.randn(4, sum(p.numel() for p in model.parameters()), dtype=torch.float64), dim=1)
    seeds = [7, 7, 7, 7]                                  # pairs 0 and 1 share; 2 (image) and 3 (label) do not
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    together = tfa(model, names, x, y, g, samples=3, pair_seeds=seeds, cost=1)
    assert len(forwards) == 3 * 3                       # three rows (pairs 0+1, 2, 3) × three samples
    for p in range(4):
        alone = tfa(model, names, x[p:p + 1], y[p:p + 1], g[p:p + 1], samples=3, pair_seeds=seeds[p:p + 1], cost=1)
        assert torch.allclose(together.signed[p], alone.signed[0], rtol=1e-12, atol=1e-14), p
    assert not torch.allclose(together.signed[0], together.signed[1])      # two tests, two maps


def test_rows_one_at_a_time_keep_float32_maps_at_the_float64_ones_on_a_large_model():
    """The cosine's gradient goes to the double backward as its `grad_outputs`: no float32 graph
    over an 11M-long concatenated gradient, whose rounding put maps 3.5e-4 off (ResNet-18, 64 px)."""
    import torchvision

    from auditor.attribution.tfa import one_image_many_tests

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    names = select_parameters(model)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 7])
    g = F.normalize(torch.randn(2, sum(p.numel() for p in model.parameters())), dim=1)
    single = torch.cat([one_image_many_tests(model, names)(x[i:i + 1], y[i:i + 1], g[i:i + 1]) for i in range(2)])
    double = torch.cat([one_image_many_tests(model.double(), names)(x[i:i + 1].double(), y[i:i + 1], g[i:i + 1].double())
                        for i in range(2)])
    assert float((single.double() - double).abs().max() / double.abs().max()) < 1e-5
