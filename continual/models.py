"""Models of the paper's supervised experiments; each exposes ``features(x) -> (B, D)`` and ``head`` (nn.Linear).

* ``mlp``: 4 hidden layers of 256 ReLU units; with ``layernorm`` a LayerNorm after each linear layer, before the
  activation (as the paper). With ``activation="crelu"`` (CReLU(z) = [relu(z), relu(−z)] doubles the width) the
  hidden width is reduced so that the parameter count matches the ReLU network's.
* ``resnet18``: torchvision's ResNet-18 (batch norm); ``small_stem`` (default for inputs ≤ 64 px) replaces the 7×7
  stride-2 stem and max-pool with a 3×3 stride-1 convolution, the usual choice for 32×32 images. With
  ``activation="crelu"`` the stem convolution has half the channels (its CReLU restores them) and every residual
  block's inner activation is a CReLU over channels, with the block's first convolution narrowed to
  c' = round(p·(i + p)/(i + 2p)) channels (i in, p out) so that i·c' + 2c'·p = i·p + p·p: the block keeps its
  parameter count. The activation after the residual sum stays a ReLU (a CReLU there would double the residual
  stream).
* ``vit-tiny``: torchvision's ``VisionTransformer`` in the ViT-Tiny configuration the paper names (Touvron et al.,
  2021: 12 layers, 3 heads, width 192, MLP 768) with patch 4 for the small images.
  With ``activation="crelu"`` each encoder MLP's GELU becomes a CReLU and its hidden width m becomes
  h = round(m·(2d + 1)/(3d + 1)) (d the model width), which keeps the MLP's parameter count (512 for m = 768).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

MODELS = ("mlp", "resnet18", "vit-tiny")


ACTIVATIONS = ("relu", "crelu")


class CReLU(nn.Module):
    """Concatenated ReLU (Abbas et al. 2023): [relu(z), relu(−z)] along ``dim`` (the feature dimension: the last
    one for linear layers and tokens, 1 for the channels of a convolution)."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([torch.relu(x), torch.relu(-x)], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def crelu_width(in_features: int, width: int, depth: int, classes: int) -> int:
    """Hidden width w' whose CReLU MLP has (about) the parameter count of the ReLU MLP of width ``width``."""
    target = in_features * width + width + (depth - 1) * (width * width + width) + width * classes + classes
    # in·w + w + (depth−1)(2w·w + w) + 2w·classes + classes = target  →  a w² + b w + c = 0
    a, b, c = 2 * (depth - 1), in_features + 1 + (depth - 1) + 2 * classes, classes - target
    return max(1, round((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)))


class BodyHead(nn.Module):
    """A network as the experiments see it: ``features = body(x)`` (B, D) and a linear ``head`` on top (the
    diagnostics read the features; the subclasses build ``body`` and ``head``)."""

    body: nn.Module
    head: nn.Linear

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class MLP(BodyHead):
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


def _conv(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Conv2d:
    """A bias-free convolution initialised as torchvision's ResNet initialises its own (Kaiming normal, fan out)."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class CReLUBasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` with a CReLU between its convolutions (see the module docstring)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        c_in, planes, stride = block.conv1.in_channels, block.conv2.out_channels, block.conv1.stride
        inner = max(1, round(planes * (c_in + planes) / (c_in + 2 * planes)))
        self.conv1, self.bn1, self.act = _conv(c_in, inner, 3, stride, 1), nn.BatchNorm2d(inner), CReLU(dim=1)
        self.conv2, self.bn2 = _conv(2 * inner, planes, 3, 1, 1), block.bn2
        self.downsample, self.relu = block.downsample, nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet18(BodyHead):
    def __init__(self, in_channels: int, classes: int, small_stem: bool = True, activation: str = "relu") -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet18(num_classes=classes)
        crelu = activation == "crelu"
        stem = 32 if crelu else 64
        if small_stem:
            net.conv1 = _conv(in_channels, stem, 3, 1, 1)
            net.maxpool = nn.Identity()
        elif in_channels != 3 or crelu:
            net.conv1 = _conv(in_channels, stem, 7, 2, 3)
        if crelu:
            net.bn1, net.relu = nn.BatchNorm2d(stem), CReLU(dim=1)
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
                for i, block in enumerate(layer):
                    layer[i] = CReLUBasicBlock(block)
        self.head = net.fc
        net.fc = nn.Identity()
        self.body = net


class ViTTiny(BodyHead):
    def __init__(self, in_shape: tuple[int, ...], classes: int, patch: int = 4, layers: int = 12, heads: int = 3,
                 width: int = 192, activation: str = "relu") -> None:
        super().__init__()
        from torchvision.models import VisionTransformer

        c, h, w = in_shape
        if h != w or h % patch:
            raise ValueError(f"vit-tiny needs square images divisible by the patch size {patch}; got {h}×{w}")
        self.body = VisionTransformer(h, patch, layers, heads, width, 4 * width, num_classes=classes)
        if c != 3:
            self.body.conv_proj = nn.Conv2d(c, width, patch, patch)
        if activation == "crelu":
            mlp_dim = 4 * width
            hidden = round(mlp_dim * (2 * width + 1) / (3 * width + 1))
            for block in self.body.encoder.layers:
                dropout = block.mlp[2].p
                fc1, fc2 = nn.Linear(width, hidden), nn.Linear(2 * hidden, width)
                for fc in (fc1, fc2):  # torchvision's MLPBlock initialisation
                    nn.init.xavier_uniform_(fc.weight)
                    nn.init.normal_(fc.bias, std=1e-6)
                block.mlp = nn.Sequential(fc1, CReLU(), nn.Dropout(dropout), fc2, nn.Dropout(dropout))
        self.head = self.body.heads.head
        self.body.heads = nn.Identity()


def build_model(name: str, in_shape: tuple[int, ...], classes: int, layernorm: bool = False,
                activation: str = "relu", width: int = 256, depth: int = 4) -> nn.Module:
    """One of :data:`MODELS` for inputs of shape ``in_shape`` (C, H, W) and ``classes`` outputs."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid names are {', '.join(ACTIVATIONS)}")
    if name == "mlp":
        return MLP(math.prod(in_shape), classes, width, depth, layernorm, activation)
    if layernorm:
        raise ValueError(f"--layernorm applies to the mlp; {name} has its own normalization")
    if name == "resnet18":
        return ResNet18(in_shape[0], classes, small_stem=max(in_shape[1:]) <= 64, activation=activation)
    if name == "vit-tiny":
        return ViTTiny(in_shape, classes, activation=activation)
    raise ValueError(f"unknown model {name!r}; valid names are {', '.join(MODELS)}")
