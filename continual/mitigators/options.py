"""Every mitigator's options, one dataclass each, nested in :class:`MitigatorOptions` (``RunConfig.options``).

Each option is written once, here, with its default and its meaning; the mitigators' constructors take their
defaults from these classes, and the command line is generated from them (``--spectral.k 4``,
``--l2.decoupled``, ``--redo.frequency 500``; ``python -m continual run -h`` lists them all). A run records every
option of every mitigator in its config.json, so ``--resume`` and a sweep refuse a folder trained with other
options; a row's ``options`` column holds the options of its own mitigator that differ from the defaults
(``k=4``), so a table regenerates from rows alone.
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping


@dataclass(frozen=True)
class Decoupled:
    decoupled: bool = False  # the penalty as a decoupled step after Adam (θ ← θ − ηλ∇r) instead of a loss term


@dataclass(frozen=True)
class ShrinkPerturbOptions:
    noise_scale: float | None = None  # σ of the perturbation (None: sqrt(λ(2 − λ)), which keeps the initial scale)

    def __post_init__(self) -> None:
        _check(self.noise_scale is None or 0 <= self.noise_scale < math.inf,
               "shrink-perturb: noise_scale must be a finite number >= 0 or None", self.noise_scale)


@dataclass(frozen=True)
class ReDoOptions:
    frequency: int = 1000  # recycle dormant units every F steps

    def __post_init__(self) -> None:
        _check(self.frequency >= 1, "redo: frequency must be >= 1", self.frequency)


@dataclass(frozen=True)
class EWCOptions:
    beta_fisher: float = 0.999  # EMA rate of the Fisher estimate (squared gradients)
    beta_anchor: float = 0.999  # EMA rate of the anchor weights

    def __post_init__(self) -> None:
        for b in (self.beta_fisher, self.beta_anchor):
            _check(0.0 <= b < 1.0, "ewc: betas must lie in [0, 1)", b)


@dataclass(frozen=True)
class SpectralOptions:
    k: float = 2  # exponent of σ1 in R = Σ(σ1^k − 1)² (paper: 2)

    def __post_init__(self) -> None:
        _check(0 < self.k < math.inf, "spectral: k must be a finite number > 0", self.k)


@dataclass(frozen=True)
class SpectralStepOptions:
    k: float = 2  # exponent of σ1 in R = Σ(σ1^k − 1)² (paper: 2)
    pull: str = "two-sided"  # two-sided (the paper's R) or one-sided (only σ1 > 1 and scales > 1 are pulled)
    precondition: bool = False  # the step divided by Adam's sqrt(v̂)+eps, as the coupled form; λ on its scale
    heads: bool = True  # the output layer is pulled too (--no-spectral.heads leaves the logits layer alone)
    fused_order: bool = False  # the power iteration's fused order, in one pass (docs/specopt.md); no vectorized seeds

    def __post_init__(self) -> None:
        _check(0 < self.k < math.inf, "spectral: k must be a finite number > 0", self.k)
        _check(self.pull in ("two-sided", "one-sided"), "spectral: pull must be two-sided or one-sided", self.pull)


@dataclass(frozen=True)
class CBPOptions:
    decay: float = 0.99  # EMA rate of each unit's utility
    maturity: int = 100  # steps a unit must age before it may be replaced

    def __post_init__(self) -> None:
        _check(0.0 <= self.decay < 1.0, "cbp: decay must lie in [0, 1)", self.decay)
        _check(self.maturity >= 0, "cbp: maturity must be >= 0", self.maturity)


def _check(ok: bool, message: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{message}, got {value!r}")


@dataclass(frozen=True)
class MitigatorOptions:
    l2: Decoupled = field(default_factory=Decoupled)  # l2's options
    l2_init: Decoupled = field(default_factory=Decoupled)  # l2-init's options
    shrink_perturb: ShrinkPerturbOptions = field(default_factory=ShrinkPerturbOptions)  # shrink-perturb's options
    redo: ReDoOptions = field(default_factory=ReDoOptions)  # redo's options
    wasserstein: Decoupled = field(default_factory=Decoupled)  # wasserstein's options
    ewc: EWCOptions = field(default_factory=EWCOptions)  # ewc's options
    spectral: SpectralStepOptions = field(default_factory=SpectralStepOptions)  # spectral's options
    spectral_coupled: SpectralOptions = field(default_factory=SpectralOptions)  # spectral-coupled's options
    cbp: CBPOptions = field(default_factory=CBPOptions)  # cbp's options

    @classmethod
    def from_dict(cls, options: Mapping[str, Mapping[str, Any]] | MitigatorOptions | None) -> MitigatorOptions:
        """From ``{"spectral": {"k": 4}, ...}`` (mitigator names or field names as keys; what is missing keeps its
        default: a config.json from before an option existed reads as that option's default). Unknown names raise
        a one-line ``ValueError`` that lists the valid ones."""
        if isinstance(options, MitigatorOptions):
            return options
        given: dict[str, Any] = {}
        for key, values in (options or {}).items():
            attr = key.replace("-", "_")
            mitigator = attr.replace("_", "-")
            if attr not in _TYPES:
                from . import MITIGATORS

                if key in MITIGATORS:
                    raise ValueError(f"mitigator {key!r} has no options")
                raise ValueError(f"options for unknown mitigator {key!r}; valid: {', '.join(MITIGATORS)}")
            if not isinstance(values, _TYPES[attr]):
                valid = [f.name for f in fields(_TYPES[attr])]
                unknown = sorted(set(values) - set(valid))
                if unknown:
                    raise ValueError(f"{mitigator} has no option {unknown[0]!r}; valid: {', '.join(valid)}")
                values = _TYPES[attr](**values)
            given[attr] = values
        return cls(**given)

    def of(self, mitigator: str) -> dict[str, Any]:
        """The options of ``mitigator`` as keyword arguments (``{}`` for one without options)."""
        attr = mitigator.replace("-", "_")
        return asdict(getattr(self, attr)) if attr in _TYPES else {}

    def changed(self, mitigator: str) -> dict[str, Any]:
        """The options of ``mitigator`` that differ from their defaults."""
        attr = mitigator.replace("-", "_")
        default = asdict(_TYPES[attr]()) if attr in _TYPES else {}
        return {k: v for k, v in self.of(mitigator).items() if v != default[k]}


_TYPES: dict[str, Any] = {f.name: f.default_factory for f in fields(MitigatorOptions)}  # field → its options class


def option_names(name: str) -> list[str]:
    """The options mitigator ``name`` accepts (sorted)."""
    from . import _check_name

    _check_name(name)
    attr = name.replace("-", "_")
    return sorted(f.name for f in fields(_TYPES[attr])) if attr in _TYPES else []


__all__ = ["CBPOptions", "Decoupled", "EWCOptions", "MitigatorOptions", "ReDoOptions", "ShrinkPerturbOptions",
           "SpectralOptions", "SpectralStepOptions", "option_names"]
