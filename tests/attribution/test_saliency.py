"""Base saliency methods equal captum's; batched multi-class maps equal one-class maps; the
model is left exactly as it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop as CaptumGuided
from captum.attr import InputXGradient as CaptumIxG
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import LayerAttribution, LayerGradCam
from captum.attr import Saliency as CaptumSaliency
from torch import nn

from auditor.attribution.saliency import GradCam, make_method
from auditor.registry import SALIENCY_METHODS

import fakes


class Net(nn.Module):
    """Small CNN; `functional=True` uses F.relu / torch.relu / Tensor.relu instead of nn.ReLU."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU(inplace=True)

    def forward(self, x):
        if self.functional:
            x = self.pool(F.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            return self.fc(x.flatten(1)).relu_() - 0.1
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        return self.relu3(self.fc(x.flatten(1))) - 0.1


def net(functional: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return Net(functional).eval()


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.rand(3, 3, 16, 16), torch.tensor([0, 2, 4])


def captum_maps(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if name == "gradient":
        return CaptumSaliency(model).attribute(x, target=y, abs=False)
    if name == "input_x_gradient":
        return CaptumIxG(model).attribute(x, target=y)
    if name == "integrated_gradients":
        return CaptumIG(model).attribute(x, target=y, n_steps=32, internal_batch_size=20)
    if name == "guided_backprop":
        return CaptumGuided(model).attribute(x, target=y)
    cam = LayerGradCam(model, model.conv2).attribute(x, target=y, relu_attributions=True)
    return LayerAttribution.interpolate(cam, x.shape[2:], interpolate_mode="bilinear")


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS.names))
def test_each_method_equals_captum(name, batch):
    model = net()
    x, y = batch
    options = {"internal_batch_size": 20} if name == "integrated_gradients" else {}
    ours = make_method(name, model, **options).attribute(x, y)[:, 0]
    theirs = captum_maps(name, model, x, y).detach()
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS.names))
@pytest.mark.parametrize("batched_backward", [False, True], ids=["k-backward-passes", "one-vmapped-backward"])
def test_batched_classes_equal_one_class_at_a_time(name, batched_backward, batch):
    model = net(functional=name == "guided_backprop")
    x, _ = batch
    classes = torch.tensor([[0, 1, 2], [3, 4, 0], [2, 2, 1]])
    method = make_method(name, model, batched_backward=batched_backward)
    together = method.attribute(x, classes)
    for k in range(3):
        alone = method.attribute(x, classes[:, k])[:, 0]
        assert torch.allclose(together[:, k], alone, atol=1e-6)


def test_guided_backprop_guides_functional_relu(batch):
    x, y = batch
    with_modules = make_method("guided_backprop", net()).attribute(x, y)
    functional = make_method("guided_backprop", net(functional=True)).attribute(x, y)
    plain = make_method("gradient", net(functional=True)).attribute(x, y)
    assert torch.allclose(functional, with_modules, atol=1e-6)
    assert not torch.allclose(functional, plain, atol=1e-3)


def snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, type(m), m.training, dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
             for n, m in model.named_modules()],
            [(n, p.requires_grad, p.grad) for n, p in model.named_parameters()])


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS.names))
@pytest.mark.parametrize("functional", [False, True])
def test_model_is_unchanged_after_every_method(name, functional, batch):
    model = net(functional)
    before = snapshot(model)
    for _ in range(3):
        make_method(name, model).attribute(*batch)
    after = snapshot(model)
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    assert before[1] == after[1] and before[2] == after[2]


def test_grad_cam_finds_last_conv_and_rejects_unknown_layer(batch):
    cam = GradCam(net())
    cam.attribute(batch[0], batch[1][:, None])
    assert cam.layer_name == "conv2"
    with pytest.raises(ValueError, match="no layer 'conv9'"):
        GradCam(net(), layer="conv9")


def test_grad_cam_on_a_vit_uses_the_last_attention_input_as_a_patch_grid():
    model, x = fakes.vit(), torch.randn(3, 3, 16, 16, dtype=torch.float64)   # class token, 4×4 patch grid
    classes = torch.tensor([[0], [1], [2]])
    maps = make_method("grad_cam", model).attribute(x, classes)
    # reference: the last block's ln_1 output by a plain hook, its gradient by autograd, reshaped by hand
    recorded = []
    handle = model.encoder.layers[-1].ln_1.register_forward_hook(lambda m, i, o: recorded.append(o))
    logits = model(x)
    handle.remove()
    tokens = recorded[0]                                                     # (3, 1 + 16, 8)
    grads = torch.autograd.grad(logits.gather(1, classes).sum(), tokens)[0]
    patches = tokens[:, 1:].detach().reshape(3, 4, 4, 8).permute(0, 3, 1, 2)
    weights = grads[:, 1:].reshape(3, 4, 4, 8).permute(0, 3, 1, 2).mean((2, 3), keepdim=True)
    expected = F.interpolate((weights * patches).sum(1, keepdim=True).clamp_min(0), size=(16, 16), mode="bilinear",
                             align_corners=False)
    assert torch.allclose(maps[:, 0], expected, atol=1e-12)
    assert bool((maps.flatten(1).abs().sum(1) > 0).all())          # conv_proj's maps were often all zero


@pytest.mark.parametrize("tokens,grid", [(197, (1, 14)), (196, (0, 14)), (50, (1, 7)), (198, (2, 14)), (3, None)])
def test_token_grid_reads_prefix_tokens_and_the_patch_side(tokens, grid):
    from auditor.attribution.saliency import token_grid

    assert token_grid(tokens) == grid


def test_grad_cam_on_timm_vits_picks_the_residual_stream_not_qkv():
    timm = pytest.importorskip("timm")
    from auditor.attribution.saliency import default_cam_layer

    deit = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8)
    assert default_cam_layer(deit.eval(), torch.randn(3, 32, 32)) == "blocks.11.norm1"
    pooled = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                               global_pool="avg", class_token=False, depth=2)
    assert default_cam_layer(pooled.eval(), torch.randn(3, 32, 32)) == "norm"       # every patch feeds the pool
