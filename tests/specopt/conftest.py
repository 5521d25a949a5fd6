import os

import torch
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=40, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


def matrix_with_spectrum(singular_values, rows, cols, seed=0, dtype=torch.float64):
    """W = U diag(s) Vᵀ with random orthonormal U, V (independent of the code under test)."""
    g = torch.Generator().manual_seed(seed)
    r = len(singular_values)
    u, _ = torch.linalg.qr(torch.randn(rows, r, generator=g, dtype=dtype))
    v, _ = torch.linalg.qr(torch.randn(cols, r, generator=g, dtype=dtype))
    return u @ torch.diag(torch.as_tensor(singular_values, dtype=dtype)) @ v.T
