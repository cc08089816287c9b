"""TFA through ops without a double backward (fused attention, hardsigmoid): the composites give
the same maps as finite differences of Grad-Cos; an op with no composite names itself."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditor.attribution.second_order import SecondOrderUnsupported, missing_op, twice_differentiable
from auditor.attribution import tfa as tfa_module
from auditor.attribution.tfa import tfa
from auditor.errors import CannotJudge

import fakes


class SqueezeExcite(nn.Module):
    """MobileNetV3's gate: a conv whose output is scaled by `nn.Hardsigmoid` of its pooled mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gate = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.hardswish(self.conv(x))
        h = h * nn.Hardsigmoid()(self.gate(h.mean((2, 3), keepdim=True)))
        return self.head(h.mean((2, 3)))


def grad_cos(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_test: torch.Tensor) -> torch.Tensor:
    """Grad-Cos of one example with the test gradient: first order only."""
    params = list(model.parameters())
    flat = torch.cat([g.flatten() for g in torch.autograd.grad(F.cross_entropy(model(x), y), params)])
    return flat @ g_test / flat.norm()


def finite_difference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g_test: torch.Tensor,
                      direction: torch.Tensor, h: float = 1e-5) -> float:
    """(cos(x + h v) − cos(x − h v)) / 2h: the TFA map's component along `v`."""
    up = grad_cos(model, x + h * direction, y, g_test)
    down = grad_cos(model, x - h * direction, y, g_test)
    return float((up - down) / (2 * h))


@pytest.mark.parametrize("build,size", [(fakes.vit, 16), (lambda: SqueezeExcite().double().eval(), 12)],
                         ids=["vit", "hardsigmoid"])
@pytest.mark.parametrize("vmap_from", [1, 10**9], ids=["vmap", "one_by_one"])
def test_tfa_matches_finite_differences_through_ops_without_double_backward(build, size, vmap_from, monkeypatch):
    monkeypatch.setattr(tfa_module, "MIN_VMAP_ROWS", vmap_from)
    torch.manual_seed(1)
    model = build()
    names = [n for n, _ in model.named_parameters()]
    x, y = torch.randn(2, 3, size, size, dtype=torch.float64), torch.tensor([0, 2])
    g_test = F.normalize(torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64), dim=1)
    maps = tfa(model, names, x, y, g_test).signed
    for p in range(2):
        v = torch.randn_like(x[p:p + 1])
        expected = finite_difference(model, x[p:p + 1], y[p:p + 1], g_test[p], v)
        assert float((maps[p] * v[0]).sum()) == pytest.approx(expected, rel=1e-4, abs=1e-9)


def test_hardsigmoid_composite_equals_the_kernel_in_value_and_gradient():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    kernel = torch.autograd.grad(F.hardsigmoid(x).sum(), x)[0]
    with twice_differentiable("test"):
        value = F.hardsigmoid(x)
        composite = torch.autograd.grad(value.sum(), x)[0]
    assert torch.equal(value, F.hardsigmoid(x))
    interior = (x.abs() - 3).abs() > 1e-9
    assert torch.allclose(composite[interior], kernel[interior], rtol=0, atol=1e-8)  # the kernel rounds 1/6 to float32


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_an_op_without_a_composite_names_itself_and_cannot_judge():
    model = fakes.fused_attention().eval()
    names = [n for n, _ in model.named_parameters()]
    g_test = F.normalize(torch.randn(1, sum(p.numel() for p in model.parameters())), dim=1)
    with pytest.raises(SecondOrderUnsupported, match="scaled_dot_product_flash_attention_for_cpu_backward") as info:
        tfa(model, names, torch.randn(1, 1, 8, 8), torch.tensor([1]), g_test)
    assert isinstance(info.value, CannotJudge)
    assert info.value.field == "model" and "TFA" in info.value.message


def test_missing_op_reads_both_autograd_messages():
    assert missing_op(RuntimeError("derivative for aten::hardsigmoid_backward is not implemented")) \
        == "aten::hardsigmoid_backward"
    assert missing_op(RuntimeError("Trying to use forward AD with aten::foo_backward that does not support it"
                                   )) == "aten::foo_backward"
    assert missing_op(RuntimeError("out of memory")) is None
