"""Bounded memory for the per-example work (featurizing, exact test gradients, TFA, saliency,
occlusion): chunks sized from a byte budget and a per-example cost measured at the real input
size (`saved_bytes`: one probe pass), halved when a chunk still runs out of memory."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import torch

from auditor.attribution.second_order import math_attention
from auditor.errors import AttributionError, MemoryWarning

GRADIENT_BUDGET_BYTES = 512 * 2**20
ACTIVATION_BUDGET_BYTES = 1024 * 2**20   # forward/backward activations of a batch (saliency, occlusion, logits)
BACKWARD_PEAK = 2                         # a backward holds about as much again as the graph it frees
OOM_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), MemoryError)
T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory" RuntimeError."""
    return isinstance(exc, OOM_ERRORS) or (
        isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc)))


def rows_within(bytes_per_row: int, cap: int, budget: int = GRADIENT_BUDGET_BYTES) -> int:
    """How many rows of `bytes_per_row` fit the budget (at least 1, at most `cap`)."""
    return max(1, min(cap, budget // max(1, bytes_per_row)))


def saved_bytes(run: Callable[[], object], model: torch.nn.Module) -> int:
    """Bytes of the distinct storages autograd saves for a backward while `run()` executes (what
    the graph keeps alive: activations, and for a double backward the first backward's graph);
    the storages of `model`'s parameters and buffers, shared by every row, are not counted."""
    shared = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    seen: dict[int, torch.UntypedStorage] = {}     # held until the end: a freed address is not reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in shared:
            seen[storage.data_ptr()] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(storage.nbytes() for storage in seen.values())


def example_bytes(model: torch.nn.Module, image: torch.Tensor) -> int:
    """Peak bytes one example costs in a forward and backward to its input (saliency, per-example
    gradients; an upper bound for a forward alone), measured on `image (C, H, W)`, with attention
    on the math kernel: per-example gradients run it there (`FuncGradients`), and it keeps the
    attention weights the fused kernels do not (a DeiT-tiny at 224 px: ~35 MB more per example)."""
    x = image[None].detach().clone().requires_grad_(True)   # a view would count its whole batch

    def run() -> None:
        with torch.enable_grad(), math_attention():
            model(x).float().logsumexp(1).sum().backward(inputs=[x])

    held = saved_bytes(run, model)
    return BACKWARD_PEAK * held + x.numel() * x.element_size()


class Chunked:
    """Runs work over `n` items in chunks of `size`; a chunk that runs out of memory is retried at
    half the size (with a `MemoryWarning`) and the smaller size is kept for later calls."""

    def __init__(self, size: int, what: str, setting: str, fix: str) -> None:
        self.size, self.what, self.setting, self.fix = max(1, size), what, setting, fix

    def map(self, n: int, run: Callable[[slice], T]) -> list[T]:
        parts, start = [], 0
        while start < n:
            part = slice(start, min(n, start + self.size))
            try:
                parts.append(run(part))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._shrink(exc)
                continue
            start = part.stop
        return parts

    def _shrink(self, exc: BaseException) -> None:
        """Halve the chunk after an out-of-memory error, or give up at one item."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.size == 1:
            raise AttributionError(f"out of memory computing {self.what} of a single example: {exc}",
                                   field=self.setting, fix=self.fix) from None
        self.size = max(1, self.size // 2)
        name = self.setting.rsplit(".", 1)[-1]
        warnings.warn(f"out of memory computing {self.what}; retrying with {name}={self.size} "
                      f"(set {self.setting} to start there)", MemoryWarning, stacklevel=4)
