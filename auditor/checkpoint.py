"""Checkpoints as users have them: a state dict saved with `torch.save(model.state_dict(), path)`,
or one inside a trainer's dict, keys prefixed by a wrapper or not, or a `.safetensors` file (timm
and Hugging Face ship weights so); loaded with `weights_only=True` (never unpickling code), every
mismatch an error naming the file and a fix."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import torch
from torch import nn

from auditor.errors import TargetError, error_at
from auditor.spec import Where
from auditor.suggest import few


WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights")   # where trainers keep the weights
PREFIXES = ("module.", "model.", "_orig_mod.")   # DataParallel/DDP, Lightning, torch.compile


def load_checkpoint(model: nn.Module, path: Path, where: Where, key: str | None = None) -> None:
    """Load the weights of a checkpoint as users have them: a state dict saved with
    `torch.save(model.state_dict(), path)`, or one inside a trainer's dict (`state_dict`,
    `model_state_dict`, ... or `checkpoint_key:`), keys prefixed by a wrapper (`module.`,
    Lightning's `model.`) or not. Never unpickles code."""
    if not path.is_file():
        raise error_at(TargetError, where, f"checkpoint '{path}' not found",
                       "train the model first or fix the path (relative to the audit file)")
    try:
        loaded = read_weights(path)
    except pickle.UnpicklingError:
        if path.suffix == ".safetensors":
            raise error_at(TargetError, where, f"checkpoint '{path}' is a safetensors file, which torch "
                           f"{torch.__version__} cannot read by itself",
                           "pip install safetensors (or auditor[models]), or re-save the weights with "
                           "torch.save(model.state_dict(), PATH)") from None
        raise error_at(TargetError, where, f"checkpoint '{path}' needs full pickle loading, which the auditor refuses",
                       "re-save only the weights: torch.save(model.state_dict(), PATH)") from None
    except Exception as exc:
        raise error_at(TargetError, where, f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}",
                       "the file is damaged or not a torch checkpoint; re-save it") from None
    state = strip_prefix(weights_of(loaded, path, where, key), set(model.state_dict()), path)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise error_at(TargetError, where, f"checkpoint '{path}' does not fit the model: {detail}",
                       "use the checkpoint that was saved from this architecture and num_classes") from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {few(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {few(result.unexpected_keys)}")
        raise error_at(TargetError, where, f"checkpoint '{path}' does not match the model: {'; '.join(parts)}",
                       "use the checkpoint that was saved from this architecture")


def read_weights(path: Path) -> object:
    """What the file holds, on the CPU: a `.safetensors` file through the `safetensors` package when
    it is installed (recent torch reads the format itself too), anything else by `torch.load`
    without unpickling code."""
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            pass
        else:
            return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def weights_of(loaded: object, path: Path, where: Where, key: str | None) -> dict[str, torch.Tensor]:
    """The state dict in a loaded checkpoint: itself, `loaded[key]`, or the first known wrapper entry."""
    def is_state(value: object) -> bool:
        return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())

    if key is not None:
        if not isinstance(loaded, dict) or key not in loaded:
            keys = sorted(map(str, loaded)) if isinstance(loaded, dict) else []
            raise error_at(TargetError, where, f"checkpoint '{path}' has no entry '{key}' (top-level keys: {few(keys)})",
                           "set `checkpoint_key:` to the entry that holds the weights")
        loaded = loaded[key]
    if is_state(loaded):
        return loaded
    if isinstance(loaded, dict):
        for name in WRAPPERS:
            if is_state(loaded.get(name)):
                return loaded[name]
        keys = sorted(map(str, loaded))
        raise error_at(TargetError, where, f"checkpoint '{path}' holds no state dict the auditor knows where to find "
                       f"(top-level keys: {few(keys)})",
                       "set `checkpoint_key:` to the entry that holds the weights, or save "
                       "torch.save(model.state_dict(), PATH)")
    raise error_at(TargetError, where, f"checkpoint '{path}' is not a state dict (a mapping of names to tensors)",
                   "save it with torch.save(model.state_dict(), PATH)")


def strip_prefix(state: dict[str, torch.Tensor], expected: set[str], path: Path) -> dict[str, torch.Tensor]:
    """Keys without a wrapper's prefix when that makes them the model's (and say so)."""
    if set(state) & expected:
        return state
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if set(stripped) & expected:
                warnings.warn(f"checkpoint '{path}': keys start with '{prefix}' (a wrapper such as "
                              f"DataParallel or Lightning); loaded without it", stacklevel=2)
                return stripped
    return state
