"""Property-test the regularizer on your own model with hypothesis: for any scale of its weights and any learning
rate, one SpectralAdam step with a zero loss gradient moves every layer's σ1 toward 1 and never past it — checked
with torch.linalg.matrix_norm, not with specopt's own estimate.

    python examples/property_test.py          # 50 examples
    python examples/property_test.py --tiny   # 5 examples (what CI runs)
"""

import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import specopt


def my_model() -> nn.Module:  # put your own model here
    return nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))


def sigma1(model: nn.Module) -> dict[str, float]:
    return {name: float(torch.linalg.matrix_norm(p.detach(), ord=2))
            for name, p, role in specopt.named_roles(model) if role == "matrix"}


@settings(max_examples=5 if "--tiny" in sys.argv else 50, deadline=None)
@given(scale=st.floats(1e-2, 1e3), lr=st.floats(1e-5, 1.0), strength=st.floats(1e-3, 10.0),
       seed=st.integers(0, 2**16))
def test_one_step_moves_sigma1_toward_one_and_never_past_it(scale, lr, strength, seed):
    torch.manual_seed(seed)
    model = my_model()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    optimizer = specopt.SpectralAdam(specopt.param_groups(model), lr=lr, strength=strength, init_iterations=100)
    before = sigma1(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only the spectral step moves the weights
    optimizer.step()
    for name, after in sigma1(model).items():
        low, high = sorted((before[name], 1.0))
        assert low * (1 - 1e-4) <= after <= high * (1 + 1e-4), (name, before[name], after)


if __name__ == "__main__":
    test_one_step_moves_sigma1_toward_one_and_never_past_it()
    print("property holds on every example")
