"""specopt — spectral regularization for continual learning (Lewandowski et al., ICLR 2025).

Keeps every layer's largest singular value near 1 (biases near 0, normalization scales near 1) as a decoupled
optimizer step, in the style of AdamW's weight decay::

    import specopt
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)       # Adam + spectral step
    opt = specopt.SpectralAdamW(specopt.param_groups(model), lr=1e-3)      # AdamW + spectral step
    opt = specopt.Spectral(torch.optim.SGD(model.parameters(), lr=0.1))     # any optimizer + spectral step
    loss = loss + 1e-4 * specopt.spectral_penalty(model)                   # the paper's coupled form
    print(specopt.describe(opt))                                           # what is regularized, and how
    step = specopt.compile_step(opt)                                       # the fast path: a compiled step
"""

from .kernel import power_iteration
from .optim import (
    COMPILE_OPTIONS,
    CONTINUAL_STRENGTH,
    DEFAULT_INIT_ITERATIONS,
    DEFAULT_STRENGTH,
    Spectral,
    SpectralAdam,
    SpectralAdamW,
    compile_step,
)
from .penalty import SpectralPenalty, spectral_norms, spectral_penalty
from .report import describe
from .roles import ROLES, infer_role, named_roles, output_layer, param_groups
from .stacked import StackedSpectralAdam

__version__ = "0.1.0"

__all__ = [
    "COMPILE_OPTIONS",
    "CONTINUAL_STRENGTH",
    "DEFAULT_INIT_ITERATIONS",
    "DEFAULT_STRENGTH",
    "ROLES",
    "Spectral",
    "SpectralAdam",
    "SpectralAdamW",
    "SpectralPenalty",
    "StackedSpectralAdam",
    "compile_step",
    "describe",
    "infer_role",
    "named_roles",
    "output_layer",
    "param_groups",
    "power_iteration",
    "spectral_norms",
    "spectral_penalty",
]
