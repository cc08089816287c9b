"""Second derivatives through models whose ops lack a double backward.

TFA differentiates a gradient (∂²ℓ/∂θ∂x). Some kernels users' models run have no derivative of
their backward: the fused CPU/flash attention of `F.scaled_dot_product_attention` (every
torchvision and timm ViT) and `F.hardsigmoid` (MobileNetV3's squeeze-excitation). Inside
`twice_differentiable` they run as their composite definitions (attention on the math kernel;
`relu6(x + 3) / 6`), equal in value and first derivative, twice differentiable. An op it does
not know and that has no double backward raises `SecondOrderUnsupported`, naming the op.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from auditor.errors import CannotJudge


class SecondOrderUnsupported(CannotJudge):
    """A second-order method met an op without a double backward: the rule cannot run on this model."""


def _hardsigmoid(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """`F.hardsigmoid` as relu6(x + 3) / 6 (its backward is then twice differentiable)."""
    out = F.relu6(x + 3.0) / 6.0
    return x.copy_(out) if inplace else out


COMPOSITES: dict[Callable[..., Any], Callable[..., Any]] = {F.hardsigmoid: _hardsigmoid}


class TwiceDifferentiable(TorchFunctionMode):
    """Runs the `COMPOSITES` ops, where a module calls them, as their twice-differentiable definitions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return COMPOSITES.get(func, func)(*args, **(kwargs or {}))


def math_attention() -> AbstractContextManager:
    """Attention on the math kernel: its ops have double backwards and vmap batching rules, and
    it keeps the attention weights a memory probe must count (the fused kernels have neither)."""
    return sdpa_kernel([SDPBackend.MATH])


MISSING = re.compile(r"(?:derivative for |forward AD with )(\S+?)(?: that does not| is not implemented|$)")


def missing_op(exc: BaseException) -> str | None:
    """The op named by autograd's "derivative for OP is not implemented" (or its forward-AD twin)."""
    if not isinstance(exc, (RuntimeError, NotImplementedError)):
        return None
    match = MISSING.search(str(exc))
    return match.group(1) if match else None


@contextmanager
def twice_differentiable(what: str) -> Iterator[None]:
    """Second-order work on any model: known ops swapped for composites; an unknown op without a
    double backward raises `SecondOrderUnsupported` naming the op and `what` needed it."""
    try:
        with math_attention(), TwiceDifferentiable():   # attention inside any wrapper too
            yield
    except (RuntimeError, NotImplementedError) as exc:
        op = missing_op(exc)
        if op is None:
            raise
        raise SecondOrderUnsupported(
            f"{what} needs second derivatives, and this model runs {op}, which has none in torch "
            f"{torch.__version__}", field="model",
            fix=f"drop the rules that need {what} for this model, or replace the module that calls {op} "
                "with a twice-differentiable equivalent") from None
