r"""Baseline mitigators of loss of plasticity, selectable by name with their strength.

``build_mitigator(name, model, lr, strength)`` returns a :class:`Mitigator` that owns the optimizer and plugs
into the task-agnostic loop (see :mod:`continual.mitigators.base`)::

    mit = build_mitigator("l2-init", model, lr=1e-3)           # strength=None → DEFAULT_STRENGTHS[name]
    opt = mit.optimizer
    ...
    opt.zero_grad(); loss = CE(model(x), y)
    pen = mit.penalty(model); loss = loss + pen if pen is not None else loss
    loss.backward(); opt.step(); mit.after_step(step, x)

=================  ============================================================  ===========  =================
name               update                                                         strength     default
=================  ============================================================  ===========  =================
none               Adam                                                           unused       0
l2                 + λ‖θ‖²                                                        λ            1e-4 (paper, B)
l2-init            + λ‖θ − θ0‖² (Kumar et al., 2023)                              λ            1e-4 (paper, B)
shrink-perturb     θ ← (1−λ)θ + λμ + σ·s·ξ after each step (Ash & Adams, 2020)    λ (shrink)   1e-4
redo               recycle τ-dormant units every F steps (Sokar et al., 2023)     τ            0.1 (F = 1000)
crelu              activation [relu(z), relu(−z)] (Abbas et al., 2023)            unused       0
wasserstein        + λ Σ_l ‖sort θ_l − sort θ0_l‖² (Lewandowski et al., 2023)     λ            1e-4 (paper, B)
ewc                + λ Σ F(θ − θ')², EMA Fisher/anchor (Elsayed & Mahmood, 2024)  λ            1e-4 (paper, B)
spectral           SpectralAdam: Adam, then θ ← θ − ηλ∇R                          λ decoupled  1 (continual)
spectral-coupled   + λR(θ) (the paper's form)                                     λ            1e-4 (paper, B)
cbp                continual backprop (Dohare et al., 2024)                       ρ            1e-4
=================  ============================================================  ===========  =================

Mitigator-specific options are keyword arguments of :func:`build_mitigator` (``decoupled`` for l2/l2-init/
wasserstein, ``noise_scale`` for shrink-perturb, ``frequency`` for redo, ``beta_fisher``/``beta_anchor`` for ewc,
``k`` for the spectral ones, ``decay``/``maturity`` for cbp, and ``seed`` for all), each written once with its
default in :mod:`continual.mitigators.options`. ``spectral``'s default is ``specopt.CONTINUAL_STRENGTH`` (the
optimizer's own default, ``specopt.DEFAULT_STRENGTH``, is the drop-in strength). See docs/mitigators.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

import specopt

from .base import Mitigator, ParameterRegularizer, default_seed
from .options import MitigatorOptions, option_names
from .regularizers import (
    CReLUMitigator,
    L2,
    L2Init,
    NoMitigation,
    SpectralCoupled,
    SpectralDecoupled,
    StreamingEWC,
    Wasserstein,
)
from .resets import ContinualBackprop, ReDo, ShrinkPerturb, UnitBlock, dormant_scores, is_activation, mlp_blocks

_CLASSES: dict[str, type[Mitigator]] = {
    "none": NoMitigation,
    "l2": L2,
    "l2-init": L2Init,
    "shrink-perturb": ShrinkPerturb,
    "redo": ReDo,
    "crelu": CReLUMitigator,
    "wasserstein": Wasserstein,
    "ewc": StreamingEWC,
    "spectral": SpectralDecoupled,
    "spectral-coupled": SpectralCoupled,
    "cbp": ContinualBackprop,
}

MITIGATORS: tuple[str, ...] = tuple(_CLASSES)

DEFAULT_STRENGTHS: dict[str, float] = {
    "none": 0.0,
    "l2": 1e-4,  # paper Appendix B: 1e-4 best on tiny-ImageNet/CIFAR for all regularizers (1e-3 on SVHN2)
    "l2-init": 1e-4,
    "shrink-perturb": 1e-4,  # per-step shrink; noise σ = sqrt(λ(2−λ)) keeps the initial scale
    "redo": 0.1,  # dormancy threshold τ
    "crelu": 0.0,
    "wasserstein": 1e-4,
    "ewc": 1e-4,
    "spectral": float(specopt.CONTINUAL_STRENGTH),  # decoupled, per unit lr: the continual setting (docs/strength.md)
    "spectral-coupled": 1e-4,
    "cbp": 1e-4,  # replacement rate ρ
}


# Mitigators whose strength is unused (a sweep runs them once per seed, whatever --strengths says).
NO_STRENGTH: tuple[str, ...] = ("none", "crelu")


def model_activation(name: str) -> str:
    """The activation the model must be built with: ``"crelu"`` for the crelu mitigator, else ``"relu"``."""
    _check_name(name)
    return "crelu" if name == "crelu" else "relu"


def _check_name(name: str) -> None:
    if name not in _CLASSES:
        raise ValueError(f"unknown mitigator {name!r}; valid names are {', '.join(MITIGATORS)}")


def strength_or_default(name: str, strength: float | None = None) -> float:
    """``strength``, or mitigator ``name``'s :data:`DEFAULT_STRENGTHS` entry when it is None: the one place a
    mitigator's default strength is filled in (a run's :class:`~continual.learner.Run`, and through it the vectorized
    seeds, and a sweep's grid all ask here)."""
    _check_name(name)
    return DEFAULT_STRENGTHS[name] if strength is None else strength


def build_mitigator(name: str, model: nn.Module, lr: float, strength: float | None = None,
                    **options: Any) -> Mitigator:
    """Build mitigator ``name`` for ``model`` (call right after the model is initialised: anchors are θ0).

    ``strength=None`` uses :data:`DEFAULT_STRENGTHS`. ``options`` are the mitigator's keyword options
    (unknown ones raise ``ValueError``).
    """
    s = strength_or_default(name, strength)
    try:
        return _CLASSES[name](model, lr, s, **options)
    except TypeError as e:
        if "unexpected keyword" in str(e):
            raise ValueError(f"mitigator {name!r} got an unknown option: {e}") from None
        raise


__all__ = [
    "DEFAULT_STRENGTHS",
    "MITIGATORS",
    "NO_STRENGTH",
    "MitigatorOptions",
    "CReLUMitigator",
    "ContinualBackprop",
    "L2",
    "L2Init",
    "Mitigator",
    "NoMitigation",
    "ParameterRegularizer",
    "ReDo",
    "ShrinkPerturb",
    "SpectralCoupled",
    "SpectralDecoupled",
    "StreamingEWC",
    "UnitBlock",
    "Wasserstein",
    "build_mitigator",
    "default_seed",
    "dormant_scores",
    "is_activation",
    "mlp_blocks",
    "option_names",
    "model_activation",
    "strength_or_default",
]
