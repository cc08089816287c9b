"""Per-example gradients equal an explicit per-example autograd loop; projection is sound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from auditor.attribution.gradients import FuncGradients, HookGradients, make_gradient_computer, select_parameters
from auditor.attribution.projection import BLOCK_ROWS, RademacherProjector, SparseProjector, make_projector, rademacher
from auditor.errors import AttributionError
from auditor.registry import PROJECTIONS


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.conv(x)))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True), Residual(4),
        nn.Conv2d(4, 4, 3, groups=2, dilation=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    model.train()
    with torch.no_grad():  # non-trivial running statistics, then eval mode
        for _ in range(3):
            model(torch.randn(8, 3, 16, 16))
    return model.eval()


def loop_gradients(model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


@pytest.mark.parametrize("computer", [FuncGradients, HookGradients])
def test_tiny_cnn_with_batchnorm_and_residual_matches_loop(computer):
    model = tiny_cnn()
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 5, (6,))
    names = select_parameters(model)
    expected = loop_gradients(model, names, x, y)
    assert torch.allclose(computer(model, names).flat(x, y), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("computer", [FuncGradients, HookGradients])
def test_resnet18_matches_loop_on_two_images(computer):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    names = select_parameters(model)
    expected = loop_gradients(model, names, x, y)
    got = computer(model, names).flat(x, y)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_a_vision_transformer_matches_loop_without_falling_back_to_a_loop_per_example():
    import warnings

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 2, 1])
    names = select_parameters(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = FuncGradients(model, names).flat(x, y)      # fused attention has no vmap batching rule
    assert not [w for w in caught if "batching rule" in str(w.message)]
    assert torch.allclose(got, loop_gradients(model, names, x, y), atol=1e-5, rtol=1e-4)


def test_the_per_example_cost_probe_counts_what_the_math_attention_kernel_keeps():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from auditor.attribution.memory import BACKWARD_PEAK, example_bytes, saved_bytes

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2,
                                                 hidden_dim=16, mlp_dim=32, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32, requires_grad=True)

    def backward() -> None:
        model(x).logsumexp(1).sum().backward(inputs=[x])

    with sdpa_kernel([SDPBackend.MATH]):
        kept = saved_bytes(backward, model)
    assert example_bytes(model, x[0]) >= BACKWARD_PEAK * kept


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 5, 3, padding=1),                        # an RGB first layer
    nn.Conv2d(1, 4, (3, 5), padding=(1, 2), bias=False),  # rectangular kernel, grey input
    nn.Conv2d(2, 3, 3),                                   # no padding
    nn.Conv2d(6, 4, 3, padding=1, groups=2),              # grouped
    nn.Conv2d(3, 4, 3, stride=2, padding=1),              # strided
], ids=["rgb", "rect", "valid", "grouped", "strided"])
def test_conv_weight_gradients_match_loop(conv):
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.Flatten(), nn.LazyLinear(3)).eval()
    x, y = torch.randn(4, conv.in_channels, 9, 10), torch.tensor([0, 2, 1, 2])
    model(x)  # materialise the lazy head
    names = select_parameters(model)
    assert torch.allclose(HookGradients(model, names).flat(x, y), loop_gradients(model, names, x, y),
                          atol=1e-5, rtol=1e-4)


def test_layers_select_only_named_modules_and_auto_uses_hooks():
    model = tiny_cnn()
    names = select_parameters(model, ("6",))
    assert names == ["6.weight", "6.bias"]
    assert isinstance(make_gradient_computer(model, names), HookGradients)
    model[1].train()  # BatchNorm in train mode cannot be done per example by hooks
    assert isinstance(make_gradient_computer(model, select_parameters(model)), FuncGradients)


def test_unknown_layer_is_an_error_with_suggestion():
    with pytest.raises(AttributionError, match=r"no module named 'Residual'\n  fix: module names: 0, 1, 2, 3, 3.conv"):
        select_parameters(tiny_cnn(), ("Residual",))
    with pytest.raises(AttributionError, match="did you mean '3.conv'"):
        select_parameters(tiny_cnn(), ("3.cnv",))


def test_no_hook_is_left_behind():
    model = tiny_cnn()
    computer = HookGradients(model, select_parameters(model))
    for _ in range(5):
        computer.flat(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("kind", [RademacherProjector, SparseProjector])
def test_projection_is_seeded_blockwise_and_preserves_inner_products(kind):
    torch.manual_seed(0)
    g = torch.randn(40, 20000)
    projector = kind(20000, 4096, seed=3)
    whole = projector.project(g)
    split = projector.project_blocks([g[:, :7000], g[:, 7000:]])
    assert torch.allclose(whole, split, atol=1e-4)
    assert torch.equal(whole, kind(20000, 4096, seed=3).project(g))
    exact = F.normalize(g, dim=1) @ F.normalize(g, dim=1).T
    approx = F.normalize(whole, dim=1) @ F.normalize(whole, dim=1).T
    assert (approx - exact).abs().max() < 0.1


def test_no_projection_when_parameters_fit():
    g = torch.randn(3, 100)
    assert torch.equal(make_projector(100, 128).project(g), g)


def test_every_projection_kind_honours_the_block_contract():
    """Per-parameter blocks and the whole gradient give the same features; a wrong width is refused."""
    shapes = [torch.Size([30, 20]), torch.Size([30]), torch.Size([10, 30])]
    g = torch.randn(4, 930, generator=torch.Generator().manual_seed(0))
    projectors = [make_projector(930, 64, kind, seed=1, shapes=shapes) for kind in PROJECTIONS.names]
    for projector in projectors + [make_projector(930, 1024)]:
        blocks = list(g.split([600, 30, 300], dim=1))
        assert torch.allclose(projector.project_blocks(blocks), projector.project(g), atol=1e-5)
        with pytest.raises(ValueError, match="expects 930 inputs, got 900"):
            projector.project_blocks([g[:, :900]])


def test_dense_projection_is_the_product_with_the_seeded_rademacher_matrix():
    g = torch.randn(3, BLOCK_ROWS + 100, generator=torch.Generator().manual_seed(0))
    matrix = torch.cat([rademacher(BLOCK_ROWS, 64, 5 * 1_000_003 + i) for i in range(2)])[:g.shape[1]]
    assert set(matrix.unique().tolist()) == {-1 / 8, 1 / 8}
    assert torch.allclose(RademacherProjector(g.shape[1], 64, seed=5).project(g), g @ matrix, atol=1e-4)
