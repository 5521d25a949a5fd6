"""Swap in the optimizer: the 10 lines that add spectral regularization to an existing training loop."""

import torch
from torch import nn

import specopt

model = nn.Sequential(nn.Linear(64, 256), nn.LayerNorm(256), nn.ReLU(), nn.Linear(256, 10))
optimizer = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)  # was: torch.optim.Adam(model.parameters())
# any other optimizer: specopt.Spectral(torch.optim.SGD(specopt.param_groups(model), lr=0.1, momentum=0.9))
# continual learning over many tasks: strength=specopt.CONTINUAL_STRENGTH (docs/strength.md)
print(specopt.describe(optimizer))  # which tensor gets which rule

x, y = torch.randn(512, 64), torch.randint(0, 10, (512,))
for step in range(200):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"loss {loss.item():.3f}; σ1 per layer:", {k: round(v.item(), 3) for k, v in specopt.spectral_norms(model).items()})
