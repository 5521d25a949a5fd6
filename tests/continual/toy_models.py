"""A toy model shaped like continual's MLP (``body`` features + ``head``), shared by the continual tests."""

import torch
import torch.nn.functional as F
from torch import nn


class CReLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([F.relu(x), F.relu(-x)], dim=-1)


class MLP(nn.Module):
    """Flatten → [Linear → (LayerNorm) → act] × 2 → head, exposing ``features`` and ``head``."""

    def __init__(self, activation: str = "relu", layer_norm: bool = True, d_in: int = 6, width: int = 8,
                 n_out: int = 3):
        super().__init__()
        m = 2 if activation == "crelu" else 1
        act = CReLU if activation == "crelu" else nn.ReLU
        norm = (lambda: nn.LayerNorm(width)) if layer_norm else nn.Identity
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(d_in, width), norm(), act(), nn.Linear(width * m, width), norm(), act()
        )
        self.head = nn.Linear(width * m, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
