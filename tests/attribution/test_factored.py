"""The factored (LoGra) projection against obviously-correct references: the explicit Kronecker
matrix applied to explicit per-example gradients, and inner products kept in expectation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from auditor.attribution.factored import FactoredProjector, gradient_shares, plan_blocks
from auditor.attribution.gradients import FuncGradients, HookGradients, select_parameters
from auditor.attribution.projection import make_projector
from sample_audits.models import small_cnn


class Mixed(nn.Module):
    """Every layer kind the fast path meets: strided/dilated/padded conv without bias, a grouped
    conv (the exact fallback), eval BatchNorm, a Linear on a 3-D input, a Linear called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.token = nn.Linear(7, 6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(8 * 6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.grouped(torch.relu(self.bn(self.conv(x))))         # (b, 8, 7, 7)
        t = torch.relu(self.token(h.mean(2)))                         # (b, 8, 6): Linear on (b, 8, 7)
        t = self.shared(torch.relu(self.shared(t)))                   # the same Linear twice
        return self.head(t.flatten(1))


def mixed_model() -> nn.Module:
    torch.manual_seed(0)
    model = Mixed()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def batch(n: int = 5, size: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def factored(model: nn.Module, dim: int, seed: int = 0, shares=None) -> tuple[HookGradients, FactoredProjector]:
    hooks = HookGradients(model, select_parameters(model))
    return hooks, make_projector(hooks.dim, dim, "factored", seed, shapes=hooks.shapes, shares=shares)


@pytest.mark.parametrize("make", [mixed_model, lambda: small_cnn().eval()])
def test_fast_path_equals_projecting_the_explicit_per_example_gradients(make):
    model = make()
    x, y = batch(size=13 if make is mixed_model else 28)
    hooks, projector = factored(model, 300 if make is mixed_model else 2048, seed=3)
    assert isinstance(projector, FactoredProjector) and any(b.k_out < b.out for b in projector.blocks)
    fast = projector.features(hooks, x, y)
    slow = projector.project_blocks([g.flatten(1) for g in FuncGradients(model, hooks.names).per_parameter(x, y)])
    assert fast.shape == (len(x), projector.out_dim)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-5 * float(slow.abs().max()))
    assert torch.allclose(projector.features(FuncGradients(model, hooks.names), x, y), slow)   # any computer


def test_weight_block_is_the_kronecker_product_of_its_two_projections():
    shapes = [torch.Size([5, 2, 3]), torch.Size([5])]
    projector = FactoredProjector.for_shapes(shapes, 8)
    (block,) = projector.blocks
    p_out, p_in = projector.matrices(block, torch.device("cpu"))
    assert p_out is not None and p_in is not None and block.width + projector.rest_projector.out_dim <= 8 + 1
    grads = torch.randn(4, 35, dtype=torch.float64).float()
    out = projector.project(grads)
    kron = torch.kron(p_out, p_in)                                   # row (o·inp + i), column (k·k_in + j)
    assert torch.allclose(out[:, :block.width], grads[:, :30] @ kron, atol=1e-6)
    assert torch.allclose(out[:, block.width:], projector.rest_projector.project(grads[:, 30:]))


def test_inner_products_are_kept_in_expectation_over_seeds():
    """Mean over 400 seeds of <Pu, Pv> is <u, v> within 4 standard errors (closed form: E[PPᵀ] = I)."""
    torch.manual_seed(0)
    shapes = [torch.Size([12, 20]), torch.Size([12])]
    u, v = torch.randn(2, 252)
    v = 0.6 * u + 0.8 * v
    estimates = torch.stack([(lambda p: (p.project(u[None]) * p.project(v[None])).sum())(
        FactoredProjector.for_shapes(shapes, 40, seed)) for seed in range(400)])
    assert abs(float(estimates.mean()) - float(u @ v)) < 4 * float(estimates.std()) / 20


def test_blocks_fit_the_budget_small_layers_are_exact_and_shares_move_dimensions():
    shapes = [torch.Size([16, 3, 3, 3]), torch.Size([16]), torch.Size([64, 16, 3, 3]), torch.Size([10, 256])]
    blocks, rest = plan_blocks(shapes, 2048)
    sizes = {b.index: (b.k_out, b.k_in) for b in blocks}
    assert sizes[0] == (16, 27) and rest == 16                        # smaller than their share: exact
    assert sum(b.width for b in blocks) + rest <= 2048
    even = dict((b.index, b.width) for b in blocks)
    skewed = dict((b.index, b.width) for b in plan_blocks(shapes, 2048, [0.0, 0.0, 0.9, 0.1])[0])
    assert skewed[2] > even[2] and skewed[3] < even[3]


def test_same_seed_same_features_and_the_layout_names_the_columns():
    model = mixed_model()
    x, y = batch()
    (hooks, a), (_, b) = factored(model, 200, seed=5), factored(model, 200, seed=5)
    assert torch.equal(a.features(hooks, x, y), b.features(hooks, x, y))
    assert not torch.equal(a.features(hooks, x, y), factored(model, 200, seed=6)[1].features(hooks, x, y))
    assert len(a.layout) == 2 * len(a.blocks) + 1
    shares = gradient_shares(hooks, x, y, chunk=2)
    assert len(shares) == len(hooks.names) and abs(sum(shares) - 1) < 1e-9
    assert factored(model, 200, shares=shares)[1].layout != a.layout


def test_projected_grad_cos_keeps_the_ranking_of_exact_grad_cos(trained_checkpoint):
    """The trained sample CNN on real images (17k parameters into 2,048): per test image, Spearman ρ
    over 300 training images between projected and exact Grad-Cos, for factored and sparse."""
    from auditor.data import fashion_mnist

    model = small_cnn()
    model.load_state_dict(torch.load(trained_checkpoint, weights_only=True))
    model.eval()
    train, test = fashion_mnist("train", channels=3), fashion_mnist("test", channels=3)
    x, y = train.batch(torch.arange(300))
    xt, yt = test.batch(torch.arange(16))
    hooks = HookGradients(model, select_parameters(model))
    exact = F.normalize(hooks.flat(xt, yt), dim=1) @ F.normalize(hooks.flat(x, y), dim=1).T
    rank = lambda s: s.argsort(1).argsort(1).double()  # noqa: E731
    medians = {}
    for kind, shares in (("factored", gradient_shares(hooks, x[:16], y[:16], chunk=16)), ("sparse", None)):
        projector = make_projector(hooks.dim, 2048, kind, 0, shapes=hooks.shapes, shares=shares)
        scores = F.normalize(projector.features(hooks, xt, yt), dim=1) @ F.normalize(projector.features(hooks, x, y), dim=1).T
        a, b = rank(exact), rank(scores)
        medians[kind] = float(F.cosine_similarity(a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)).median())
    print(medians)
    assert medians["factored"] >= 0.95 and medians["factored"] >= medians["sparse"] - 0.02


def test_bfloat16_autocast_features_agree_with_float32():
    """`precision: bfloat16` (autocast) on the CPU: each example's feature within cosine 0.98."""
    from auditor.attribution.features import Featurizer

    model = small_cnn().eval()
    x, y = batch(32, 28)
    hooks, projector = factored(model, 2048)
    full, half = Featurizer(hooks, projector, 32)(x, y), Featurizer(hooks, projector, 32, precision="bfloat16")(x, y)
    assert half.dtype == torch.float32 and float((full * half).sum(1).min()) >= 0.98


@pytest.mark.parametrize("kind", ["sparse", "rademacher", "factored"])
def test_transpose_is_the_dense_adjoint_of_every_projection(kind):
    """`Projector.transpose` (one backward through `project`) equals Pᵀ of the dense matrix read off
    the projector column by column: the kernel TFA's direction back in parameter space."""
    shapes = [torch.Size([6, 5]), torch.Size([6]), torch.Size([4, 6])]
    projector = make_projector(sum(s.numel() for s in shapes), 12, kind, seed=3, shapes=shapes)
    dense = projector.project(torch.eye(projector.in_dim)).double()                # (P, d): row j = P e_j
    rows = torch.randn(3, projector.out_dim, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(projector.transpose(rows).double(), rows.double() @ dense.T, atol=1e-5)
    identity = make_projector(10, 12)
    assert torch.equal(identity.transpose(rows[:, :10]), rows[:, :10])
