"""Hooks that live only inside context managers: registered in `__enter__`, removed in `__exit__`."""

from __future__ import annotations

import torch
from torch import nn


class RecordLayerIO:
    """Context manager: forward hooks that record (input, output) of `modules`; removed on exit.

    The hook returns a clone so that a later in-place op (e.g. `ReLU(inplace=True)`) cannot
    overwrite the recorded output whose gradient we ask for.
    """

    def __init__(self, modules: dict[str, nn.Module], calls: dict) -> None:
        self.modules, self.calls, self.handles = modules, calls, []

    def __enter__(self) -> RecordLayerIO:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
            self.calls[name].append((inputs[0].detach(), output))
            return output.clone()
        return hook

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


class _GuidedReLU(torch.autograd.Function):
    """ReLU forward; backward passes only positive gradients through positive inputs."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        output = x.clamp_min(0)
        ctx.save_for_backward(output)
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (output,) = ctx.saved_tensors
        return grad.clamp_min(0) * (output > 0)


_RELUS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu_,
          torch.Tensor.relu, torch.Tensor.relu_}


class GuidedReLU(torch.overrides.TorchFunctionMode):
    """Inside `with GuidedReLU():` every relu — `nn.ReLU` modules, `F.relu`, `torch.relu`,
    `Tensor.relu` and their in-place forms — runs with the guided-backprop backward rule.

    Nothing on the model is changed, so nothing needs restoring; in-place relus return a
    new tensor instead of writing into their input (only the returned value is used).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            return _GuidedReLU.apply(args[0])
        return func(*args, **(kwargs or {}))
