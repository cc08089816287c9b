"""Model factories the sample audits name in their YAML (`sample_audits.models:small_cnn`)."""

from __future__ import annotations

from torch import nn


def small_cnn(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    """A 17k-parameter CNN for 28×28 images: three conv blocks and a linear head."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),         # 14×14
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),           # 7×7
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),       # 3×3
        nn.Flatten(), nn.Linear(2 * width * 9, num_classes),
    )


def resnet18_28(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 (no weights) adapted to 28×28: a 3×3 stride-1 stem keeps 14×14 after its max-pool."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    return model


def small_vit(num_classes: int = 10, image_size: int = 28, patch_size: int = 4, width: int = 64,
              depth: int = 4) -> nn.Module:
    """torchvision's VisionTransformer at the sample's size: 7×7 patches of 4 pixels, a class token,
    4 blocks of width 64 (0.2M parameters); fused attention in its forward, as every ViT."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=depth, num_heads=4,
                             hidden_dim=width, mlp_dim=2 * width, num_classes=num_classes)


def mobilenet_v3_small(num_classes: int = 10, image_size: int = 64) -> nn.Module:
    """torchvision's MobileNetV3-small (no weights, hardswish and squeeze-excitation as shipped) seeing
    the sample's 28-px images resized to `image_size` first: its five stride-2 stages would leave a
    28-px image 1×1, and 64 px is what `benchmarks/architectures.py` feeds it."""
    from torchvision.models import mobilenet_v3_small as stock

    return nn.Sequential(nn.Upsample(size=(image_size, image_size), mode="bilinear", align_corners=False),
                         stock(weights=None, num_classes=num_classes))
