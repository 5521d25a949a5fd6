"""Models of the paper's supervised experiments; each exposes ``features(x) -> (B, D)`` and ``head`` (nn.Linear).

* ``mlp``: 4 hidden layers of 256 ReLU units; with ``layernorm`` a LayerNorm after each linear layer, before the
  activation (as the paper). With ``activation="crelu"`` (CReLU(z) = [relu(z), relu(−z)] doubles the width) the
  hidden width is reduced so that the parameter count matches the ReLU network's.
* ``resnet18``: torchvision's ResNet-18 (batch norm); ``small_stem`` (default for inputs ≤ 64 px) replaces the 7×7
  stride-2 stem and max-pool with a 3×3 stride-1 convolution, the usual choice for 32×32 images.
* ``vit-tiny``: torchvision's ``VisionTransformer`` with a small config (patch 4, 4 layers, 3 heads, width 192).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MODELS = ("mlp", "resnet18", "vit-tiny")


class CReLU(nn.Module):
    """Concatenated ReLU (Abbas et al. 2023): [relu(z), relu(−z)] along the last (feature) dimension."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=-1)


def crelu_width(in_features: int, width: int, depth: int, classes: int) -> int:
    """Hidden width w' whose CReLU MLP has (about) the parameter count of the ReLU MLP of width ``width``."""
    target = in_features * width + width + (depth - 1) * (width * width + width) + width * classes + classes
    # in·w + w + (depth−1)(2w·w + w) + 2w·classes + classes = target  →  a w² + b w + c = 0
    a, b, c = 2 * (depth - 1), in_features + 1 + (depth - 1) + 2 * classes, classes - target
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


class MLP(nn.Module):
    def __init__(self, in_features: int, classes: int, width: int = 256, depth: int = 4, layernorm: bool = False,
                 activation: str = "relu") -> None:
        super().__init__()
        crelu = activation == "crelu"
        if crelu:
            width = crelu_width(in_features, width, depth, classes)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = in_features
        for _ in range(depth):
            layers.append(nn.Linear(fan_in, width))
            if layernorm:
                layers.append(nn.LayerNorm(width))
            layers.append(CReLU() if crelu else nn.ReLU())
            fan_in = 2 * width if crelu else width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(fan_in, classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ResNet18(nn.Module):
    def __init__(self, in_channels: int, classes: int, small_stem: bool = True) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(num_classes=classes)
        if small_stem:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class ViTTiny(nn.Module):
    def __init__(self, in_shape: tuple[int, ...], classes: int, patch: int = 4, layers: int = 4, heads: int = 3,
                 width: int = 192) -> None:
        super().__init__()
        from torchvision.models import VisionTransformer

        c, h, w = in_shape
        if h != w or h % patch:
            raise ValueError(f"vit-tiny needs square images divisible by the patch size {patch}; got {h}×{w}")
        self.body = VisionTransformer(h, patch, layers, heads, width, 4 * width, num_classes=classes)
        if c != 3:
            self.body.conv_proj = nn.Conv2d(c, width, patch, patch)
        self.head = self.body.heads.head
        self.body.heads = nn.Identity()

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def build_model(name: str, in_shape: tuple[int, ...], classes: int, layernorm: bool = False,
                activation: str = "relu", width: int = 256, depth: int = 4) -> nn.Module:
    """One of :data:`MODELS` for inputs of shape ``in_shape`` (C, H, W) and ``classes`` outputs."""
    if name == "mlp":
        return MLP(math.prod(in_shape), classes, width, depth, layernorm, activation)
    if activation != "relu":
        raise ValueError(f"activation {activation!r} is implemented for the mlp only")
    if layernorm:
        raise ValueError(f"--layernorm applies to the mlp; {name} has its own normalization")
    if name == "resnet18":
        return ResNet18(in_shape[0], classes, small_stem=max(in_shape[1:]) <= 64)
    if name == "vit-tiny":
        return ViTTiny(in_shape, classes)
    raise ValueError(f"unknown model {name!r}; valid names are {', '.join(MODELS)}")
