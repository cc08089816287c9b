"""Per-example loss gradients g(z) = ∇_θ ℓ(f_θ(x), y) over selected parameters.

Base: `GradientComputer`. Implementations:
- `FuncGradients`: `torch.func` (`functional_call` + `vmap(grad(...))`), any model.
- `HookGradients`: `nn.Linear`, `nn.Conv2d`, eval-mode `BatchNorm`: saves each layer's input
  and output gradient in ONE ordinary backward pass and forms the per-example parameter
  gradients from them (as captum's `sample_wise_grads_per_batch`, Opacus, Kronfluence).
`make_gradient_computer(kind="auto")` picks hooks when every selected parameter allows it.
The model is used in eval mode (BatchNorm on running statistics): the loss of one example
then depends on no other example in the batch.
"""

from __future__ import annotations

import abc
from collections import defaultdict
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from auditor.attribution.hooks import RecordLayerIO
from auditor.attribution.second_order import math_attention
from auditor.errors import AttributionError
from auditor.registry import GRADIENT_COMPUTERS
from auditor.suggest import nearest

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def select_parameters(model: nn.Module, layers: tuple[str, ...] | None = None) -> list[str]:
    """Names of trainable parameters in the modules named by `layers` (all when None)."""
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    if layers is None:
        if not trainable:
            raise AttributionError("the model has no trainable parameters",
                                   fix="unfreeze the layers to audit or name them in `layers:`")
        return trainable
    modules = dict(model.named_modules())
    names: list[str] = []
    for layer in layers:
        if layer not in modules:
            near = nearest(layer, [m for m in modules if m], n=3)
            raise AttributionError(
                f"the model has no module named '{layer}'",
                fix=f"did you mean {', '.join(repr(n) for n in near)}?" if near
                else f"module names: {', '.join(list(m for m in modules if m)[:12])}")
        prefix = f"{layer}." if layer else ""
        names += [n for n in trainable if n.startswith(prefix) and n not in names]
    if not names:
        raise AttributionError(f"the modules {list(layers)} have no trainable parameters", fix="name modules with weights")
    return names


class GradientComputer(abc.ABC):
    """Per-example gradients of the cross-entropy loss over the parameters `names`.

    `sees_layers`: the computer also gives each selected layer's input and output gradient
    (`layer_io`, with the layers in `modules`), which the factored projection reads directly."""

    sees_layers: ClassVar[bool] = False
    modules: dict[str, nn.Module] = {}

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.model = model
        self.names = list(names)
        params = dict(model.named_parameters())
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]

    @property
    def dim(self) -> int:
        """P: the number of selected parameters."""
        return sum(self.sizes)

    @abc.abstractmethod
    def per_parameter(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """One `(b, *param.shape)` gradient per selected parameter, in `names` order."""

    def flat(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """`(b, P)` per-example gradients, parameters concatenated in `names` order."""
        return torch.cat([g.flatten(1) for g in self.per_parameter(images, labels)], dim=1)


def example_loss(model: nn.Module, names: list[str]):
    """`(selected, loss)`: the selected parameters (detached) and `loss(params, x, y)`, the
    cross-entropy of ONE example `(x (C, H, W), y ())` as a pure function of them (torch.func)."""
    selected = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in selected}
    fixed.update(dict(model.named_buffers()))

    def loss(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **params}, (x.unsqueeze(0),))
        return F.cross_entropy(out, y.unsqueeze(0))

    return selected, loss


@GRADIENT_COMPUTERS.register("func")
class FuncGradients(GradientComputer):
    """`vmap(grad(loss))` over the batch via `torch.func.functional_call`. Attention runs on the
    math kernel, whose ops vmap batches; for the fused kernels torch falls back to a loop per
    example and prints a warning into the audit (same gradients and, on the CPU, the same speed:
    benchmarks/vit_gradients.py)."""

    def per_parameter(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        selected, loss = example_loss(self.model, self.names)
        with math_attention():
            grads = vmap(grad(loss), in_dims=(None, 0, 0))(selected, images, labels)
        return [grads[n] for n in self.names]


@GRADIENT_COMPUTERS.register("hooks")
class HookGradients(GradientComputer):
    """Per-example gradients from saved layer inputs and output gradients (one backward pass)."""

    sees_layers = True

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__(model, names)
        owners = parameter_owners(model, names)
        if owners is None:
            raise AttributionError("HookGradients supports only Linear, Conv2d and eval-mode BatchNorm parameters",
                                   fix="use the func gradient computer")
        self.modules = {name: module for name, module in model.named_modules() if name in owners}

    def layer_io(self, images: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]]:
        """`(name, module, input, output gradient)` of every call of a selected layer, from ONE
        forward and backward pass of the summed loss (a module called twice appears twice)."""
        calls: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)
        with RecordLayerIO(self.modules, calls):
            logits = self.model(images)
        loss = F.cross_entropy(logits, labels, reduction="sum")
        order = [(name, i) for name in calls for i in range(len(calls[name]))]
        output_grads = torch.autograd.grad(loss, [calls[name][i][1] for name, i in order], allow_unused=True)
        return [(name, self.modules[name], calls[name][i][0], g)
                for (name, i), g in zip(order, output_grads) if g is not None]

    def per_parameter(self, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        result: dict[str, torch.Tensor] = {}
        for name, module, x, g in self.layer_io(images, labels):
            for suffix, value in layer_gradients(module, x, g).items():
                key = f"{name}.{suffix}" if name else suffix
                result[key] = result[key] + value if key in result else value
        return [result.get(n, torch.zeros(len(images), *shape, device=images.device))
                for n, shape in zip(self.names, self.shapes)]


def parameter_owners(model: nn.Module, names: list[str]) -> set[str] | None:
    """Module names owning `names` if each is a weight/bias of a supported layer, else None."""
    modules = dict(model.named_modules())
    owners = set()
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = modules.get(owner)
        if leaf not in ("weight", "bias") or not _supported(module):
            return None
        owners.add(owner)
    return owners


def _supported(module: nn.Module | None) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and not isinstance(module.padding, str)
    if isinstance(module, BATCH_NORMS):
        return not module.training and module.running_mean is not None
    return False


def layer_gradients(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example `{weight, bias}` gradients of one layer from its input `x` and output grad `g`."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        out["weight"] = weight_gradient(module, x, g)
        if module.bias is not None:
            out["bias"] = bias_gradient(module, g)
    else:
        dims = tuple(range(2, g.dim()))
        shape = (1, -1) + (1,) * len(dims)
        x_hat = (x - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
        if module.weight is not None:
            out["weight"] = (g * x_hat).sum(dims)
            out["bias"] = g.sum(dims)
    return out


def weight_gradient(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-example `(b, *weight.shape)` weight gradient of a Linear (any leading dims) or Conv2d layer."""
    if isinstance(module, nn.Conv2d):
        return _conv2d_weight_grad(module, x, g)
    return torch.einsum("b...o,b...i->boi", g, x)


def bias_gradient(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Per-example `(b, out)` bias gradient of a Linear (any leading dims) or Conv2d layer."""
    if isinstance(module, nn.Conv2d):
        return g.sum((2, 3))
    return g.reshape(g.shape[0], -1, g.shape[-1]).sum(1)


def _conv2d_weight_grad(module: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """`(b, C_out, C_in/groups, kh, kw)`: the batch folded into the groups of ONE weight-gradient
    convolution (b·groups groups), 2–4× faster on CPU than unfold + bmm; any stride/dilation/groups.
    """
    b = x.shape[0]
    weight = module.weight.detach()
    _, grads, _ = torch.ops.aten.convolution_backward(
        g.reshape(1, b * module.out_channels, *g.shape[2:]), x.reshape(1, -1, *x.shape[2:]),
        weight.repeat(b, 1, 1, 1), None, module.stride, module.padding, module.dilation,
        False, [0, 0], b * module.groups, [False, True, False])
    return grads.view(b, *weight.shape)


def make_gradient_computer(model: nn.Module, names: list[str], kind: str = "auto") -> GradientComputer:
    """`auto`: hooks when every selected parameter sits in a supported layer, else torch.func."""
    if kind == "auto":
        kind = "func" if parameter_owners(model, names) is None else "hooks"
    return GRADIENT_COMPUTERS.get(kind)(model, names)
