"""VAR equals a direct loop transcription of the reference formula; T and τ behave as documented;
the result does not depend on the maps' scale."""

from __future__ import annotations

import math

import pytest
import torch

from auditor.attribution.saliency import make_method
from auditor.attribution.var import class_set, var


def reference_loop(maps: torch.Tensor, target: int, temperature: float, tau: float) -> torch.Tensor:
    """Element by element: softmax over classes of T·|A_c|/s (s: the image's largest |A|), then
    A_t · M_t · [M_t − 1/K > τ]."""
    k = maps.shape[0]
    flat = maps.reshape(k, -1).tolist()
    scale = max(abs(v) for row in flat for v in row)
    out = []
    for p in range(len(flat[0])):
        exps = [math.exp(temperature * abs(flat[c][p]) / scale) for c in range(k)]
        share = exps[target] / sum(exps)
        out.append(flat[target][p] * share * (1.0 if share - 1.0 / k > tau else 0.0))
    return torch.tensor(out, dtype=torch.float64).view(maps.shape[1:])


@pytest.mark.parametrize("temperature,tau", [(10.0, 0.01), (1.0, 0.1), (25.0, 0.0), (10.0, -1.0)])
def test_var_equals_loop_on_random_maps(temperature, tau):
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 2, 5, 5, dtype=torch.float64) * 0.3
    targets = torch.tensor([0, 3, 1])
    got = var(maps, targets, temperature, tau)
    for i in range(3):
        assert torch.allclose(got[i], reference_loop(maps[i], int(targets[i]), temperature, tau), atol=1e-12)


def test_var_equals_loop_on_real_maps():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 6)).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    classes = class_set(model(x), torch.tensor([1, 4]), top_k=2)
    maps = make_method("input_x_gradient", model).attribute(x, classes)
    got = var(maps)
    for i in range(2):
        assert torch.allclose(got[i], reference_loop(maps[i], 0, 10.0, 0.01), atol=1e-12)


def test_tau_minus_one_keeps_a_times_m_everywhere():
    maps = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    shares = torch.softmax(10 * maps.abs() / maps.abs().amax(dim=(1, 2, 3), keepdim=True), dim=1)
    assert torch.allclose(var(maps, 1, tau=-1.0), maps[:, 1] * shares[:, 1])


@pytest.mark.parametrize("factor", [1e-4, 1e-2, 1e3])
def test_scaling_the_maps_scales_var_and_keeps_its_support(factor):
    """A model with smaller gradients (larger inputs, a ViT) gets the same VAR map, scaled: before
    the per-image scale, maps of size ~1e-3 came out all zeros."""
    torch.manual_seed(0)
    maps = torch.randn(3, 4, 2, 6, 6, dtype=torch.float64)
    assert torch.allclose(var(maps * factor), var(maps) * factor, rtol=1e-9, atol=0.0)
    assert torch.count_nonzero(var(maps * factor)) == torch.count_nonzero(var(maps)) > 0


def test_all_zero_maps_give_an_all_zero_var_map_not_nan():
    assert torch.equal(var(torch.zeros(2, 3, 1, 4, 4)), torch.zeros(2, 1, 4, 4))


def test_temperature_zero_makes_classes_tie_and_removes_everything():
    maps = torch.randn(2, 3, 4, 4)
    assert torch.count_nonzero(var(maps, 0, temperature=0.0, tau=0.01)) == 0
    assert torch.allclose(var(maps, 0, temperature=0.0, tau=-1.0), maps[:, 0] / 3)


def test_default_class_set_puts_target_first_and_adds_top_others():
    logits = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 1.0, 0.0, 2.0]])
    assert class_set(logits, torch.tensor([3, 0]), top_k=2).tolist() == [[3, 1, 2], [0, 3, 1]]
