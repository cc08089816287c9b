"""Base feature-attribution methods for test images, several target classes per image at once.

Base: `SaliencyMethod.attribute(images (b, C, H, W), targets (b, K)) -> (b, K, C', H, W)`.
Every method expands the batch over the K classes and runs ONE backward pass for all of
them (no per-class calls). Implementations (registry `METHODS`):
- `gradient` ∂y_c/∂x;  `input_x_gradient` x ⊙ ∂y_c/∂x;
- `integrated_gradients` (x − x₀) ⊙ Σ_i w_i ∂y_c/∂x(x₀ + α_i (x − x₀)), Gauss–Legendre nodes
  (as captum's default), steps evaluated `internal_batch_size` images at a time;
- `guided_backprop`: gradient with guided ReLUs (`nn.ReLU` and functional relu alike);
- `grad_cam`: ReLU(Σ_k mean(∂y_c/∂A_k) A_k) at a named or the last Conv2d layer, upsampled
  bilinearly to the input size (C' = 1).
The model is left exactly as it was: hooks only inside context managers, no parameter grads.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from auditor.attribution.hooks import GuidedReLU, RecordLayerIO
from auditor.errors import AttributionError


class SaliencyMethod(abc.ABC):
    """A base attribution method; subclasses implement `_attribute` on the expanded batch."""

    name: ClassVar[str]

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Maps `(b, K, C', H, W)` for each image and each of its `K` target classes."""
        if targets.dim() == 1:
            targets = targets[:, None]
        b, k = targets.shape
        expanded = images.repeat_interleave(k, dim=0)
        maps = self._attribute(expanded, targets.reshape(-1))
        return maps.view(b, k, *maps.shape[1:])

    @abc.abstractmethod
    def _attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """`(n, C', H, W)` maps for `images (n, C, H, W)` and one target class each `(n,)`."""


def input_gradients(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """∂ logit_target / ∂ input for each row, in one backward pass."""
    x = images.detach().requires_grad_(True)
    logits = model(x)
    selected = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
    return torch.autograd.grad(selected, x)[0]


class Gradient(SaliencyMethod):
    name = "gradient"

    def _attribute(self, images, targets):
        return input_gradients(self.model, images, targets)


class InputXGradient(SaliencyMethod):
    name = "input_x_gradient"

    def _attribute(self, images, targets):
        return images * input_gradients(self.model, images, targets)


class IntegratedGradients(SaliencyMethod):
    name = "integrated_gradients"

    def __init__(self, model: nn.Module, steps: int = 32, baseline: float = 0.0,
                 internal_batch_size: int = 512) -> None:
        super().__init__(model)
        self.steps, self.baseline, self.internal_batch_size = steps, baseline, internal_batch_size

    def _attribute(self, images, targets):
        nodes, weights = np.polynomial.legendre.leggauss(self.steps)
        alphas = torch.tensor(0.5 * (nodes + 1), dtype=images.dtype, device=images.device)
        weights = torch.tensor(0.5 * weights, dtype=images.dtype, device=images.device)
        baseline = torch.full_like(images, self.baseline)
        delta = images - baseline
        n = images.shape[0]
        # all (step, image) pairs, evaluated internal_batch_size at a time
        path = (baseline.unsqueeze(0) + alphas.view(-1, 1, 1, 1, 1) * delta.unsqueeze(0)).flatten(0, 1)
        path_targets = targets.repeat(self.steps)
        grads = torch.cat([input_gradients(self.model, path[s:s + self.internal_batch_size],
                                           path_targets[s:s + self.internal_batch_size])
                           for s in range(0, path.shape[0], self.internal_batch_size)])
        summed = (grads.view(self.steps, n, *images.shape[1:]) * weights.view(-1, 1, 1, 1, 1)).sum(0)
        return delta * summed


class GuidedBackprop(SaliencyMethod):
    name = "guided_backprop"

    def _attribute(self, images, targets):
        with GuidedReLU():
            return input_gradients(self.model, images, targets)


class GradCam(SaliencyMethod):
    name = "grad_cam"

    def __init__(self, model: nn.Module, layer: str | None = None, relu: bool = True) -> None:
        super().__init__(model)
        self.layer_name = layer or last_conv_layer(model)
        modules = dict(model.named_modules())
        if self.layer_name not in modules:
            raise AttributionError(f"the model has no layer '{self.layer_name}'",
                                   field="settings.attribution.grad_cam_layer",
                                   fix="name a convolutional module, or leave it unset for the last Conv2d")
        self.layer = modules[self.layer_name]
        self.relu = relu

    def _attribute(self, images, targets):
        calls: dict = defaultdict(list)
        with RecordLayerIO({self.layer_name: self.layer}, calls):
            logits = self.model(images.detach())
        activation = calls[self.layer_name][-1][1]
        selected = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()
        grads = torch.autograd.grad(selected, activation)[0]
        cam = (grads.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True).detach()
        if self.relu:
            cam = cam.clamp_min(0)
        return F.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)


def last_conv_layer(model: nn.Module) -> str:
    """Name of the last `nn.Conv2d` in registration order."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        raise AttributionError("Grad-CAM needs a convolutional layer and the model has none",
                               field="settings.attribution.grad_cam_layer", fix="use another saliency method")
    return names[-1]


METHODS: dict[str, type[SaliencyMethod]] = {
    cls.name: cls for cls in (Gradient, InputXGradient, IntegratedGradients, GuidedBackprop, GradCam)}


def make_method(name: str, model: nn.Module, **options) -> SaliencyMethod:
    """The method `name` with its options (`steps`, `internal_batch_size`, `layer`, ...)."""
    if name not in METHODS:
        raise AttributionError(f"unknown saliency method '{name}'", fix=f"use one of: {', '.join(METHODS)}")
    return METHODS[name](model, **options)
