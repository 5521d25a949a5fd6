r"""Data-independent regularizers (L2, L2-init, Wasserstein, streaming EWC, spectral) and the CReLU baseline.

All penalties run over *every* parameter of the model (weights, biases, normalization scales), as in the paper's
baselines. λ is ``strength``; the paper swept λ ∈ {1e-2, 1e-3, 1e-4} for the coupled regularizers and found 1e-4
best on tiny-ImageNet/CIFAR (1e-3 on SVHN2) for all of them (Appendix B).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import specopt

from .base import Mitigator, ParameterRegularizer, clone_tensors, load_tensors
from .options import EWCOptions, SpectralOptions, SpectralStepOptions


class NoMitigation(Mitigator):
    """``none``: plain Adam."""

    name = "none"


class CReLUMitigator(Mitigator):
    r"""``crelu`` (Abbas et al., 2023; Shang et al., 2016): the model is built with
    :math:`\mathrm{CReLU}(z) = [\mathrm{relu}(z), \mathrm{relu}(-z)]` at the ReLU model's parameter count (see
    :func:`model_activation` and :mod:`continual.models`; mlp, resnet18 and vit-tiny); plain Adam, no penalty.
    ``strength`` is unused."""

    name = "crelu"


class L2(ParameterRegularizer):
    r"""``l2``: :math:`\lambda\lVert\theta\rVert_2^2` toward zero.
    Decoupled: :math:`\theta \leftarrow \theta - 2\eta\lambda\theta`."""

    name = "l2"

    def term(self, name: str, p: Tensor) -> Tensor:
        return p.pow(2).sum()

    def direction(self, name: str, p: Tensor) -> Tensor:
        return 2.0 * p


class _Anchored(ParameterRegularizer):
    """A regularizer with per-parameter anchors taken from the model at construction (θ0), checkpointed."""

    def __init__(self, model: nn.Module, lr: float, strength: float, **kwargs: Any) -> None:
        super().__init__(model, lr, strength, **kwargs)
        self.anchors = {n: self.anchor_of(p.detach()) for n, p in self.named_params.items()}

    def anchor_of(self, p0: Tensor) -> Tensor:
        return p0.clone()

    def _extra_state(self) -> dict[str, Any]:
        return {"anchors": clone_tensors(self.anchors)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        load_tensors(self.anchors, state["anchors"])


class L2Init(_Anchored):
    r"""``l2-init``, regenerative regularization (Kumar et al., 2023): :math:`\lambda\lVert\theta - \theta_0\rVert_2^2`,
    θ0 the parameters at construction. Decoupled: :math:`\theta \leftarrow \theta - 2\eta\lambda(\theta - \theta_0)`."""

    name = "l2-init"

    def term(self, name: str, p: Tensor) -> Tensor:
        return (p - self.anchors[name]).pow(2).sum()

    def direction(self, name: str, p: Tensor) -> Tensor:
        return 2.0 * (p - self.anchors[name])


class Wasserstein(_Anchored):
    r"""``wasserstein`` (Lewandowski et al., 2023): per parameter tensor, the squared 1-D Wasserstein-2 distance
    between the empirical distribution of its entries and that at initialisation,

    .. math:: \lambda \sum_l \sum_i \big(\mathrm{sort}(\theta_l)_i - \mathrm{sort}(\theta_{0,l})_i\big)^2 .

    Its gradient moves the entry of rank i toward the i-th smallest initial entry:
    :math:`\nabla_{\theta_{l,j}} = 2(\theta_{l,j} - \mathrm{sort}(\theta_{0,l})_{\mathrm{rank}(j)})` — the
    decoupled form uses it as :math:`\theta \leftarrow \theta - \eta\lambda\nabla`. Anchors are stored sorted and flattened.
    """

    name = "wasserstein"

    def anchor_of(self, p0: Tensor) -> Tensor:
        return p0.flatten().sort().values

    def term(self, name: str, p: Tensor) -> Tensor:
        return (p.flatten().sort().values - self.anchors[name]).pow(2).sum()

    def direction(self, name: str, p: Tensor) -> Tensor:
        flat = p.flatten()
        target = torch.empty_like(flat)
        target[flat.argsort()] = self.anchors[name]
        return (2.0 * (flat - target)).view_as(p)


class StreamingEWC(Mitigator):
    r"""``ewc``: streaming elastic weight consolidation (Kirkpatrick et al., 2017, made task-agnostic as in
    Elsayed & Mahmood, 2024). After every step, with :math:`g` the gradient of the *data loss* (the penalty's own
    gradient, cached by :meth:`penalty`, is subtracted from ``p.grad``) and θ the post-step parameters,

    .. math::
        F &\leftarrow \beta_F F + (1-\beta_F)\, g^2, \qquad
        \bar\theta \leftarrow \beta_\theta \bar\theta + (1-\beta_\theta)\,\theta, \qquad t \leftarrow t + 1\\
        \text{penalty} &= \lambda \sum_i \hat F_i(\theta_i - \hat{\bar\theta}_i)^2,\quad
        \hat F = F/(1-\beta_F^t),\ \hat{\bar\theta} = \bar\theta/(1-\beta_\theta^t)

    (bias-corrected EMAs; no penalty before the first update). Defaults β_F = β_θ = 0.999 (our choice).
    """

    name = "ewc"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, beta_fisher: float = EWCOptions.beta_fisher,
                 beta_anchor: float = EWCOptions.beta_anchor, seed: int | None = None) -> None:
        EWCOptions(beta_fisher, beta_anchor)  # checks them
        super().__init__(model, lr, strength, seed=seed)
        self.beta_fisher, self.beta_anchor = float(beta_fisher), float(beta_anchor)
        self.fisher = {n: torch.zeros_like(p, memory_format=torch.preserve_format).detach()
                       for n, p in self.named_params.items()}
        self.anchor = {n: torch.zeros_like(p).detach() for n, p in self.named_params.items()}
        self.t = 0
        self._penalty_grads: dict[str, Tensor] | None = None

    def corrected(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Bias-corrected (F̂, θ̄̂); zeros before the first update."""
        if self.t == 0:
            return self.fisher, self.anchor
        cf, ca = 1.0 - self.beta_fisher**self.t, 1.0 - self.beta_anchor**self.t
        return ({n: f / cf for n, f in self.fisher.items()}, {n: a / ca for n, a in self.anchor.items()})

    def penalty(self, model: nn.Module) -> Tensor | None:
        self._penalty_grads = None
        if self.t == 0 or self.strength == 0.0:
            return None
        fisher, anchor = self.corrected()
        terms, grads = [], {}
        for n, p in self.named_params.items():
            diff = p - anchor[n]
            terms.append((fisher[n] * diff.pow(2)).sum())
            grads[n] = (2.0 * self.strength) * fisher[n] * diff.detach()
        self._penalty_grads = grads
        return self.strength * torch.stack(terms).sum()

    @torch.no_grad()
    def after_step(self, step: int, x: Tensor) -> None:
        for n, p in self.named_params.items():
            if p.grad is not None:
                g = p.grad
                if self._penalty_grads is not None:
                    g = g - self._penalty_grads[n]
                self.fisher[n].mul_(self.beta_fisher).addcmul_(g, g, value=1.0 - self.beta_fisher)
            self.anchor[n].mul_(self.beta_anchor).add_(p, alpha=1.0 - self.beta_anchor)
        self.t += 1
        self._penalty_grads = None

    def _extra_state(self) -> dict[str, Any]:
        return {"fisher": clone_tensors(self.fisher), "anchor": clone_tensors(self.anchor), "t": self.t}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        load_tensors(self.fisher, state["fisher"])
        load_tensors(self.anchor, state["anchor"])
        self.t = int(state["t"])


class SpectralDecoupled(Mitigator):
    r"""``spectral``: :class:`specopt.SpectralAdam` over :func:`specopt.param_groups` — Adam, then
    :math:`\theta \leftarrow \theta - \eta\lambda\nabla R(\theta)` with
    :math:`R = \sum_W(\sigma_1(W)^k-1)^2 + \sum_b\lVert b\rVert^{2k} + \sum_\gamma\sum_i(\gamma_i-1)^2`, k = 2.
    Default λ = ``specopt.CONTINUAL_STRENGTH`` (decoupled, per unit learning rate). Its power-iteration vectors live
    in the optimizer's state. Options (:class:`~continual.mitigators.options.SpectralStepOptions`): ``pull``
    (``one-sided``: :math:`R^+`), ``precondition`` (the step divided by Adam's √v̂ + ε) and ``heads`` (False: the
    output layer is left alone): the forms compared in docs/strength.md; ``fused_order`` (the power iteration's
    fused order in one pass, docs/specopt.md: the same regularizer, its estimate taken on the weights just written)."""

    name = "spectral"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, k: float = SpectralStepOptions.k,
                 pull: str = SpectralStepOptions.pull, precondition: bool = SpectralStepOptions.precondition,
                 heads: bool = SpectralStepOptions.heads, fused_order: bool = SpectralStepOptions.fused_order,
                 seed: int | None = None) -> None:
        self.k, self.pull, self.precondition, self.heads = k, pull, precondition, heads
        self.fused_order = fused_order
        super().__init__(model, lr, strength, seed=seed)

    def build_optimizer(self, model: nn.Module, lr: float) -> torch.optim.Optimizer:
        groups = specopt.param_groups(model, head=None if self.heads else 0.0)
        return specopt.SpectralAdam(groups, lr=lr, strength=self.strength, k=self.k, pull=self.pull,
                                    precondition=self.precondition, fused_spectral=self.fused_order,
                                    one_pass=self.fused_order)


class SpectralCoupled(Mitigator):
    r"""``spectral-coupled``: the paper's form, Adam on :math:`J + \lambda R(\theta)` with
    :class:`specopt.SpectralPenalty` (warm-started power iteration, one per step; its vectors are checkpointed)."""

    name = "spectral-coupled"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, k: float = SpectralOptions.k,
                 seed: int | None = None) -> None:
        super().__init__(model, lr, strength, seed=seed)
        self.regularizer = specopt.SpectralPenalty(specopt.param_groups(model), k=k)

    def penalty(self, model: nn.Module) -> Tensor | None:
        if self.strength == 0.0:
            return None
        return self.strength * self.regularizer()

    def _extra_state(self) -> dict[str, Any]:
        return {"vectors": {i: (u.clone(), v.clone()) for i, (u, v) in self.regularizer.state_dict().items()}}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.regularizer.load_state_dict(state["vectors"])
