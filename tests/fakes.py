"""Tiny synthetic models and datasets for error-path tests (importable from audit YAML)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from auditor.data import ImageTensorDataset


def linear(num_classes: int = 3, channels: int = 1, size: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, num_classes))


def pooled(num_classes: int = 3) -> nn.Module:
    """Accepts any image size (adaptive pooling), as torchvision's classifiers do."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4, num_classes))


def raising() -> nn.Module:
    raise RuntimeError("weights server unreachable")


def not_a_module() -> object:
    return {"weights": 1}


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def nan_model() -> nn.Module:
    return NaNModel()


def images(n: int = 12, num_classes: int = 3, channels: int = 1, size: int = 8, label_offset: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 255, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % num_classes + label_offset
    return ImageTensorDataset(data, labels, tuple(f"c{i}" for i in range(num_classes)))


def empty() -> Dataset:
    return ImageTensorDataset(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0), ("a", "b", "c"))


class _Items(Dataset):
    def __init__(self, item):
        self.item = item

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return self.item


def int_images() -> Dataset:
    return _Items((torch.zeros(1, 8, 8, dtype=torch.uint8), 0))


def flat_images() -> Dataset:
    return _Items((torch.zeros(64), 0))


class _Slow(Dataset):
    """Real tensors served one at a time with a delay, like a dataset read from a slow disk."""

    def __init__(self, inner: ImageTensorDataset, delay: float) -> None:
        self.inner, self.delay, self.classes = inner, delay, inner.classes

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        import time

        time.sleep(self.delay)
        return self.inner[i]


def slow_images(n: int = 64, delay: float = 0.01) -> Dataset:
    return _Slow(images(n), delay)


def blind(num_classes: int = 3) -> nn.Module:
    """A model that ignores its input: every attribution map is all zeros."""
    model = linear(num_classes)
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.arange(num_classes, dtype=torch.float))
    return model


class NaNGradient(nn.Module):
    """Finite outputs whose input gradient is NaN (the derivative of sqrt at 0, times 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x):
        flat = x.flatten(1)
        return self.linear(flat) + 0 * torch.sqrt(flat - flat).sum(1, keepdim=True)


def nan_gradient() -> nn.Module:
    return NaNGradient()


class NaNParameterGradient(nn.Module):
    """Finite outputs whose parameter gradient is NaN: training-gradient features cannot be formed."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 3)

    def forward(self, x):
        w = self.linear.weight
        return self.linear(x.flatten(1)) + 0 * torch.sqrt(w - w).sum()


def nan_parameter_gradient() -> nn.Module:
    return NaNParameterGradient()


class FusedAttention(nn.Module):
    """Attention on the fused CPU kernel called directly: no second derivative, no composite."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, num_classes)

    def forward(self, x):
        t = self.proj(x[:, 0]).unsqueeze(1)          # (batch, 1 head, 8 rows, 8)
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(t, t, t)[0]
        return self.head(out[:, 0].mean(1))


def fused_attention() -> nn.Module:
    return FusedAttention()


class Scaled(Dataset):
    """Real Fashion-MNIST (3 channels) as floats `scale` × [0, 1] + `shift`: a transform gone wrong."""

    def __init__(self, split: str, n: int, scale: float, shift: float) -> None:
        from auditor.data import fashion_mnist

        self.inner, self.n, self.scale, self.shift = fashion_mnist(split, channels=3), n, scale, shift
        self.classes = self.inner.classes
        self.targets = self.inner.targets[:n]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image, label = self.inner[i]
        return image * self.scale + self.shift, label


def fashion(split: str = "train", n: int = 1000, scale: float = 1.0, shift: float = 0.0) -> Dataset:
    return Scaled(split, n, scale, shift)


def vit() -> nn.Module:
    """A float64 torchvision ViT for 16×16 RGB images (class token, 4×4 patch grid, 2 blocks) with
    a random head (torchvision zero-initialises it, so the output would ignore the input)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2,
                                                 hidden_dim=8, mlp_dim=16, num_classes=3).double().eval()
    nn.init.normal_(model.heads.head.weight, 0, 0.5)
    return model
