"""Load what an audit inspects: the model (with checkpoint), the datasets, class names, device.

Problems are reported as `TargetError`s that name the YAML field at fault and the fix;
the checks here catch what would otherwise surface as a traceback deep inside torch.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from auditor import data as data_module
from auditor.attribution.memory import ACTIVATION_BUDGET_BYTES, example_bytes, rows_within
from auditor.errors import TargetError, error_at
from auditor.spec import AuditSpec, DatasetSpec, ModelSpec, Where
from auditor.checkpoint import load_checkpoint
from auditor.suggest import did_you_mean, few


@dataclass
class Target:
    """The loaded model (eval mode, on `device`), both datasets and the class names.

    `where["train"]` / `where["test"]` are the datasets' positions in the audit YAML.
    """

    model: nn.Module
    train: Dataset
    test: Dataset
    classes: tuple[str, ...]
    device: torch.device
    spec: AuditSpec
    where: dict[str, Where] = field(default_factory=dict)
    skipped: dict[str, list[str]] = field(default_factory=dict)     # split → unreadable files left out

    def train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images `(m, C, H, W)` and labels `(m,)` of `indices`, in that order."""
        return data_module.gather(self.train, indices)

    def test_images(self, indices: torch.Tensor) -> torch.Tensor:
        """Test images `(m, C, H, W)` of `indices`, in that order."""
        return data_module.gather(self.test, indices)[0]

    @cached_property
    def example_bytes(self) -> int:
        """Bytes one image costs in a forward and backward on this model at the data's real size
        (one probe pass): what every chunked stage sizes its chunks from."""
        return example_bytes(self.model, self.test_images(torch.arange(1))[0].to(self.device))

    def rows(self, cap: int, per_example: int = 1) -> int:
        """Images per forward/backward batch within the activation budget (at least 1, at most `cap`)."""
        return rows_within(per_example * self.example_bytes, cap, ACTIVATION_BUDGET_BYTES)


def load_target(spec: AuditSpec) -> Target:
    """Build everything `spec` describes and check that model and data fit together."""
    device = resolve_device(spec.settings.device, spec.settings.where)
    with torch.random.fork_rng(devices=[]), _search_path(spec.base_dir, Path.cwd()):
        torch.manual_seed(spec.settings.seed)  # factories that draw random numbers are reproducible
        model = load_model(spec.model, spec.base_dir)
        train = load_dataset(spec.data.train, spec.base_dir)
        test = load_dataset(spec.data.test, spec.base_dir)
    skipped = {}
    if spec.data.skip_unreadable:
        train, skipped["train"] = data_module.readable_only(train)
        test, skipped["test"] = data_module.readable_only(test)
    where = {"train": spec.data.train.where, "test": spec.data.test.where, "model": spec.model.where,
             "classes": spec.data.where}
    target = bind_target(spec, model, train, test, where, spec.data.classes, device, spec.model.num_classes)
    target.skipped = {split: files for split, files in skipped.items() if files}
    return target


def bind_target(spec: AuditSpec, model: nn.Module, train: Dataset, test: Dataset, where: dict[str, Where],
                classes: tuple[str, ...] | None = None, device: torch.device | None = None,
                num_classes: int | None = None) -> Target:
    """Check that a model and two datasets fit together (items, class lists, output width) and
    hold them on the audit's device; `where` locates each part (YAML fields, or API arguments)."""
    device = device or resolve_device(spec.settings.device, spec.settings.where)
    first_train = _check_example(train, where["train"])
    first_test = _check_example(test, where["test"])
    _check_same_shape(first_train, first_test, where["test"])
    _check_same_classes(train, test, where["test"])
    classes = _class_names(classes, train, test, where["classes"], num_classes)
    model = model.to(device).eval()
    _check_output_width(model, first_test, classes, where["model"], device)
    return Target(model=model, train=train, test=test, classes=classes, device=device, spec=spec, where=where)


def resolve_device(name: str, where: Where | None = None) -> torch.device:
    """`auto` → CUDA when available, else CPU; a CUDA request without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise error_at(TargetError, where, f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N",
                       field="settings.device") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise error_at(TargetError, where, f"device '{name}' requested but CUDA is not available on this machine",
                           "use `device: auto` (CUDA when present) or `cpu`; or override it on the command line: "
                           "`auditor run --device cpu`, `pytest --audit-device cpu`", field="settings.device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise error_at(TargetError, where, f"device '{name}' does not exist ({torch.cuda.device_count()} GPUs)",
                           field="settings.device")
    return device


def import_callable(reference: str, where: Where) -> Callable[..., Any]:
    """Import `module:function` (`load_target` puts the audit's folder and the working directory on the path)."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise error_at(TargetError, where, f"cannot import module '{module_name}' ({exc})",
                       "check the module path; it is looked up next to the audit file and in the working directory") from None
    except Exception as exc:
        raise error_at(TargetError, where, f"importing '{module_name}' raised {type(exc).__name__}: {exc}",
                       "fix the error in that module") from None
    function = getattr(module, attr, None)
    if not callable(function):
        names = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise error_at(TargetError, where, f"module '{module_name}' has no function '{attr}'",
                       f"callables there: {', '.join(names[:10]) or 'none'}")
    return function


@contextmanager
def _search_path(*folders: Path) -> Iterator[None]:
    """`folders` first on `sys.path` while the factories are imported and called; restored afterwards."""
    saved = list(sys.path)
    sys.path[:0] = [str(f) for f in folders if str(f) not in sys.path]
    try:
        yield
    finally:
        sys.path[:] = saved


def load_model(spec: ModelSpec, base_dir: Path) -> nn.Module:
    where = spec.where.child("factory" if spec.factory else "arch")
    if spec.factory:
        model = _call(import_callable(spec.factory, where), spec.kwargs, where, "model factory")
    elif spec.arch.startswith("timm:"):
        model = _timm_model(spec, where)
    else:
        model = _torchvision_model(spec, where)
    if not isinstance(model, nn.Module):
        raise error_at(TargetError, where, f"the factory returned {type(model).__name__}, not a torch.nn.Module",
                       "return the model instance from the factory")
    if spec.checkpoint is not None:
        load_checkpoint(model, base_dir / spec.checkpoint, spec.where.child("checkpoint"), spec.checkpoint_key)
    return model


def _torchvision_model(spec: ModelSpec, where: Where) -> nn.Module:
    """A torchvision builder (`resnet18`) or class (`VisionTransformer`), untrained: the weights
    come from `checkpoint:`. `weights=None` is passed only to builders that take it."""
    import torchvision.models

    name = spec.arch.removeprefix("torchvision.models.")
    builder = getattr(torchvision.models, name, None)
    if builder is None or not callable(builder):
        raise error_at(TargetError, where, f"torchvision has no model '{name}'",
                       did_you_mean(name, torchvision.models.list_models(), "torchvision.models", "torchvision.models."))
    _no_download(spec, "weights", lambda value: value is not None)
    accepted = _arguments(builder)
    kwargs = {"num_classes": spec.num_classes, **spec.kwargs}
    if accepted is None or "weights" in accepted:
        kwargs = {"weights": None, **kwargs}
    return _call(builder, kwargs, where, f"torchvision.models.{name}", _arguments_fix(name, accepted))


def _timm_model(spec: ModelSpec, where: Where) -> nn.Module:
    """`arch: timm:NAME`: `timm.create_model(NAME, pretrained=False, num_classes=…, **kwargs)`."""
    try:
        import timm
    except ImportError:
        raise error_at(TargetError, where, f"`arch: {spec.arch}` needs timm, which is not installed",
                       "pip install 'auditor[models]' (or pip install timm)") from None
    name = spec.arch.removeprefix("timm:")
    if not timm.is_model(name):
        raise error_at(TargetError, where, f"timm has no model '{name}'", did_you_mean(name, timm.list_models(), "timm", "timm:"))
    _no_download(spec, "pretrained", bool)
    return _call(timm.create_model, {"model_name": name, "pretrained": False, "num_classes": spec.num_classes,
                                     **spec.kwargs}, where, f"timm model '{name}'",
                 f"check the `kwargs` against timm.create_model('{name}')'s arguments (e.g. img_size, patch_size)")


def _no_download(spec: ModelSpec, key: str, asks: Callable[[Any], bool]) -> None:
    """Pretrained weights would be downloaded (no network in CI, and not the audited weights)."""
    if key in spec.kwargs and asks(spec.kwargs[key]):
        raise error_at(TargetError, spec.where.child("kwargs"),
                       f"`kwargs.{key}` asks for downloaded weights; the audited weights come from `checkpoint:`",
                       f"remove `{key}` and point `checkpoint:` at the trained model's weights")


def _arguments(builder: Callable[..., Any]) -> set[str] | None:
    """The keyword arguments `builder` takes, or None when it takes any (`**kwargs`)."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _arguments_fix(name: str, accepted: set[str] | None) -> str:
    if accepted is None:
        return f"check the `kwargs` against torchvision.models.{name}'s documentation"
    return f"torchvision.models.{name} takes: {', '.join(sorted(accepted))}; fix `kwargs` to match"


def load_dataset(spec: DatasetSpec, base_dir: Path) -> Dataset:
    where = spec.where
    if spec.factory:
        dataset = _call(import_callable(spec.factory, where.child("factory")), spec.kwargs,
                        where.child("factory"), "dataset factory")
    elif spec.image_folder:
        dataset = _image_folder(base_dir / spec.image_folder, spec, where.child("image_folder"))
    else:
        options = spec.fashion_mnist
        root = None if options.root is None else base_dir / options.root
        try:
            dataset = data_module.fashion_mnist(options.split, root, options.channels)
        except (FileNotFoundError, RuntimeError) as exc:
            raise error_at(TargetError, where.child("fashion_mnist"), str(exc),
                           "apt-get install dataset-fashion-mnist, or set `root:`") from None
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise error_at(TargetError, where, f"the data source returned {type(dataset).__name__}, not a Dataset",
                       "return a torch Dataset of (image_tensor, label) pairs")
    if len(dataset) == 0:
        raise error_at(TargetError, where, "the dataset is empty", "point the data source at a non-empty dataset")
    return data_module.limited(dataset, spec.limit)


def _image_folder(root: Path, spec: DatasetSpec, where: Where) -> Dataset:
    from torchvision import datasets, transforms

    if not root.is_dir():
        raise error_at(TargetError, where, f"folder '{root}' not found", "fix the path (relative to the audit file)")
    steps: list[Any] = []
    t = spec.transform
    if t is not None and t.grayscale:
        steps.append(transforms.Grayscale())
    if t is not None and t.resize:
        steps += [transforms.Resize(t.resize), transforms.CenterCrop(t.resize)]
    steps.append(transforms.ToTensor())
    if t is not None and t.mean is not None:
        steps.append(transforms.Normalize(t.mean, t.std or (1.0,) * len(t.mean)))
    try:
        return datasets.ImageFolder(str(root), transform=transforms.Compose(steps))
    except (FileNotFoundError, OSError) as exc:
        raise error_at(TargetError, where, f"cannot read image folder '{root}': {exc}",
                       "use one sub-folder of images per class") from None


def _check_example(dataset: Dataset, where: Where) -> torch.Tensor:
    """Example 0 must be an (image (C, H, W) float tensor, int label) pair; returns its image."""
    try:
        item = dataset[0]
    except Exception as exc:
        raise error_at(TargetError, where, f"reading example 0 raised {type(exc).__name__}: {exc}", "fix the dataset") from None
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise error_at(TargetError, where, f"examples must be (image, label) pairs, got {type(item).__name__}",
                       "make __getitem__ return (image_tensor, label)")
    image, label = item
    if not isinstance(image, torch.Tensor):
        raise error_at(TargetError, where, f"images must be tensors, got {type(image).__name__}",
                       "add transforms.ToTensor() to the dataset")
    if image.dim() != 3:
        raise error_at(TargetError, where, f"images must be (C, H, W), got shape {tuple(image.shape)}",
                       "add the channel dimension, e.g. image.unsqueeze(0)")
    if not image.is_floating_point():
        raise error_at(TargetError, where, f"images must be float tensors, got {image.dtype}",
                       "convert with image.float() / 255 or transforms.ToTensor()")
    if isinstance(label, torch.Tensor):
        if label.numel() != 1 or label.is_floating_point():
            raise error_at(TargetError, where, "labels must be integer class indices, got a "
                           f"{label.dtype} tensor of shape {tuple(label.shape)}", "return an int label")
    elif isinstance(label, bool) or not isinstance(label, int):
        raise error_at(TargetError, where, f"labels must be integer class indices, got {type(label).__name__}",
                       "return an int label")
    return image


def _check_same_shape(train_image: torch.Tensor, test_image: torch.Tensor, where: Where) -> None:
    """Training and test images must have one shape: a model with adaptive pooling accepts
    both, but attributions (and the shortcut a model learned) would not be comparable."""
    shapes = [tuple(train_image.shape), tuple(test_image.shape)]
    if shapes[0] == shapes[1]:
        return
    (c1, h1, w1), (c2, h2, w2) = shapes
    what = (f"{c2} channels but the training images {c1}" if c1 != c2
            else f"size {h2}×{w2} but the training images {h1}×{w1}")
    fix = ("convert both alike (e.g. `transform: {grayscale: true}`, or `channels:` of fashion_mnist)" if c1 != c2
           else "resize both alike (e.g. `transform: {resize: N}`)")
    raise error_at(TargetError, where, f"the test images have {what}", fix)


def _check_same_classes(train: Dataset, test: Dataset, where: Where) -> None:
    """Labels are indices into each dataset's class list: lists that differ (a renamed or
    missing class folder) would shift the test labels silently."""
    names = [getattr(d, "classes", None) for d in (train, test)]
    if not all(names) or list(map(str, names[0])) == list(map(str, names[1])):
        return
    train_names, test_names = (list(map(str, n)) for n in names)
    only_train = [n for n in train_names if n not in test_names]
    only_test = [n for n in test_names if n not in train_names]
    difference = (f"only in train: {few(only_train)}; only in test: {few(only_test)}"
                  if only_train or only_test else f"same names in another order: train {few(train_names, 10)}")
    raise error_at(TargetError, where, f"train and test have different class lists ({difference})",
                   "give both the same classes (e.g. the same class folder names): labels are indices into them")


def _class_names(given: tuple[str, ...] | None, train: Dataset, test: Dataset, where: Where,
                 count: int | None = None) -> tuple[str, ...]:
    """`given` names, else the datasets' `classes`, else `0..count-1`."""
    if given:
        return tuple(given)
    for dataset in (test, train):
        names = getattr(dataset, "classes", None)
        if names:
            return tuple(str(n) for n in names)
    if count:
        return tuple(str(i) for i in range(count))
    raise error_at(TargetError, where, "cannot tell the class names",
                   "add `classes: [...]` under `data:` (classes= in Python) or give the dataset a `classes` attribute")


def _check_output_width(model: nn.Module, test_image: torch.Tensor, classes: tuple[str, ...], where: Where,
                        device: torch.device) -> None:
    """Probe the model with one test image: it must run and return (1, classes) logits."""
    image = test_image.unsqueeze(0).to(device)
    try:
        with torch.no_grad():
            output = model(image)
    except Exception as exc:
        raise error_at(TargetError, where, f"the model fails on a test image of shape {tuple(image.shape)}: "
                       f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
                       channels_fix(model, image.shape[1]) or "make the model accept the dataset's images (channels, size)"
                       ) from None
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise error_at(TargetError, where, f"the model must return logits of shape (batch, classes), got {shape}",
                       output_fix(output))
    if output.shape[1] != len(classes):
        raise error_at(TargetError, where, f"the model outputs {output.shape[1]} logits but the data has {len(classes)} classes",
                       "match the model's last layer to the class count, or fix `data.classes`")


def channels_fix(model: nn.Module, channels: int) -> str | None:
    """What to change when the model's first convolution takes another number of channels than the
    images have (None when it does not, or the model has no convolution)."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first.in_channels == channels:
        return None
    if first.in_channels == 1 and channels == 3:
        how = "add `grayscale: true` to an image folder's `transform:`, or give a factory's images one channel"
    elif first.in_channels == 3 and channels == 1:
        how = ("give the images 3 channels: `channels: 3` for fashion_mnist, no `grayscale: true` on an image "
               "folder, image.expand(3, -1, -1) in a factory")
    else:
        how = f"give the images {first.in_channels} channels"
    return f"the model's first layer takes {first.in_channels} channel(s) and the images have {channels}: {how}"


def output_fix(output: Any) -> str:
    """How to make `forward()` return the logits: named for outputs that carry them (a Hugging Face
    `ModelOutput`, a dict with `logits`, a tuple whose first item is them)."""
    wrap = ("give the audit a `factory:` that loads the model's weights itself (then leave out `checkpoint:`) "
            "and returns an nn.Module wrapping it whose forward(x) returns ")
    if hasattr(output, "logits"):
        return wrap + "model(x).logits"
    if isinstance(output, dict) and "logits" in output:
        return wrap + "model(x)['logits']"
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return wrap + "the (batch, classes) logits alone, e.g. model(x)[0]"
    return "return a (batch, classes) tensor from forward()"


def _call(function: Callable[..., Any], kwargs: dict, where: Where, what: str,
          fix: str = "fix the factory or its `kwargs`") -> Any:
    try:
        return function(**kwargs)
    except Exception as exc:
        raise error_at(TargetError, where, f"the {what} raised {type(exc).__name__}: {exc}", fix) from None
