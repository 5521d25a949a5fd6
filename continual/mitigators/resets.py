r"""Mitigators that re-inject randomness: shrink & perturb, ReDo and continual backprop (CBP).

ReDo and CBP recycle *units* of an MLP made of ``Linear[→LayerNorm]→activation`` blocks followed by a ``Linear``
(the next block or the head), discovered from the model's leaf modules in registration order (the order of an
``nn.Sequential``). Recycling unit i of a block

* re-initialises its incoming row ``linear.weight[i]``, ``linear.bias[i]`` from PyTorch's default ``nn.Linear``
  initialisation :math:`\mathcal U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})` (with the mitigator's generator),
* resets its LayerNorm entries to γ_i = 1, β_i = 0,
* zeroes its outgoing column(s) ``next.weight[:, i]`` (and ``[:, H + i]`` after a CReLU, whose output is
  ``[relu(z), relu(-z)]``), so the network function is unchanged at the moment of recycling,
* zeroes Adam's moments (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) at all of those entries.

Any other architecture (conv, batch norm, attention, ...) raises ``ValueError`` at construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..diagnostics import dormant_scores, is_activation, unit_activity
from .base import Mitigator, clone_tensors, load_tensors

_PASSTHROUGH = (nn.Flatten, nn.Identity, nn.Dropout)


# ------------------------------------------------------------------------------------------------- shrink & perturb
class ShrinkPerturb(Mitigator):
    r"""``shrink-perturb`` (Ash & Adams, 2020), in the per-step continual form used as a plasticity baseline
    (Kumar et al., 2023; Dohare et al., 2024). After every optimizer step, for each parameter tensor p,

    .. math:: p \leftarrow (1-\lambda)\,p + \lambda\,\mu_p + \sigma\, s_p\, \xi,\qquad \xi \sim \mathcal N(0, I)

    where (μ_p, s_p) describe p's initial distribution, measured at construction: a tensor initialised to a
    constant c (LayerNorm γ = 1, β = 0) has μ = c, s = 0 (pure shrink toward its initial value, never toward a
    collapsed γ = 0); any other tensor has μ = 0 and s = std(p_0) (the perturbation is a Gaussian with the spread of
    the initialisation). λ = ``strength`` is the per-step shrink; σ = ``noise_scale`` defaults to
    :math:`\sqrt{\lambda(2-\lambda)}`, for which the stationary distribution of the update alone is N(μ, s²), the
    initial scale. Noise comes from the mitigator's generator.
    """

    name = "shrink-perturb"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, noise_scale: float | None = None,
                 seed: int | None = None) -> None:
        super().__init__(model, lr, strength, seed=seed)
        if self.strength > 1.0:
            raise ValueError(f"shrink-perturb: strength is a per-step shrink in [0, 1], got {strength!r}")
        lam = self.strength
        self.noise_scale = math.sqrt(lam * (2.0 - lam)) if noise_scale is None else float(noise_scale)
        self.init_mean: dict[str, float] = {}
        self.init_std: dict[str, float] = {}
        for n, p in self.named_params.items():
            p0 = p.detach()
            constant = p0.numel() <= 1 or bool((p0 == p0.flatten()[0]).all())
            self.init_mean[n] = float(p0.flatten()[0]) if constant and p0.numel() else 0.0
            self.init_std[n] = 0.0 if constant else float(p0.float().std())

    @torch.no_grad()
    def after_step(self, step: int, x: Tensor) -> None:
        lam = self.strength
        for n, p in self.named_params.items():
            if lam:
                p.mul_(1.0 - lam)
                if self.init_mean[n]:
                    p.add_(lam * self.init_mean[n])
            scale = self.noise_scale * self.init_std[n]
            if scale:
                noise = torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                p.add_(noise, alpha=scale)

    def _extra_state(self) -> dict[str, Any]:
        return {"init_mean": dict(self.init_mean), "init_std": dict(self.init_std), "noise_scale": self.noise_scale}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        self.init_mean, self.init_std = dict(state["init_mean"]), dict(state["init_std"])
        self.noise_scale = float(state["noise_scale"])


# ------------------------------------------------------------------------------------------------- MLP structure
@dataclass
class UnitBlock:
    """One hidden layer of H units: ``linear`` (H outputs) [→ ``norm``] → ``activation`` → ``outgoing``."""

    linear: nn.Linear
    norm: nn.LayerNorm | None
    activation: nn.Module
    outgoing: nn.Linear
    crelu: bool

    @property
    def width(self) -> int:
        return self.linear.out_features

    def unit_activity(self, h: Tensor) -> Tensor:
        r"""Mean |h| per unit over the batch, shape (H,); after a CReLU the two halves of unit i are averaged
        (and CBP sums the outgoing mass of both halves)."""
        return unit_activity(h, self.crelu)

    def outgoing_columns(self, idx: Tensor) -> Tensor:
        return torch.cat([idx, idx + self.width]) if self.crelu else idx


def mlp_blocks(model: nn.Module) -> list[UnitBlock]:
    """The ``Linear[→LayerNorm]→activation→Linear`` blocks of an MLP, or ``ValueError`` for anything else.

    Leaf modules are read in registration order (that of an ``nn.Sequential``), except that ``model.head``, when it
    is an ``nn.Linear``, is taken as the last layer wherever it was registered."""
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):  # the final layer, wherever it was registered
        leaves = [(n, m) for n, m in leaves if m is not head] + [("head", head)]
    seq = []
    for name, m in leaves:
        if isinstance(m, _PASSTHROUGH):
            continue
        if not (isinstance(m, (nn.Linear, nn.LayerNorm)) or is_activation(m)):
            raise ValueError(
                f"unit recycling supports MLPs of Linear[->LayerNorm]->activation blocks only; "
                f"found {type(m).__name__} at {name!r}"
            )
        seq.append((name, m))
    blocks = []
    for j, (name, act) in enumerate(seq):
        if not is_activation(act):
            continue
        norm = None
        k = j - 1
        if k >= 0 and isinstance(seq[k][1], nn.LayerNorm):
            norm, k = seq[k][1], k - 1
        has_next = j + 1 < len(seq) and isinstance(seq[j + 1][1], nn.Linear)
        if k < 0 or not isinstance(seq[k][1], nn.Linear) or not has_next:
            raise ValueError(f"activation {name!r} is not between a Linear[->LayerNorm] and a Linear")
        linear, outgoing = seq[k][1], seq[j + 1][1]
        crelu = type(act).__name__ == "CReLU"
        h = linear.out_features
        if norm is not None and (tuple(norm.normalized_shape) != (h,)):
            raise ValueError(f"LayerNorm before {name!r} has shape {tuple(norm.normalized_shape)}, expected ({h},)")
        if outgoing.in_features != (2 * h if crelu else h):
            raise ValueError(f"Linear after {name!r} has {outgoing.in_features} inputs for {h} units")
        blocks.append(UnitBlock(linear, norm, act, outgoing, crelu))
    if not blocks:
        raise ValueError("unit recycling found no Linear[->LayerNorm]->activation->Linear block in the model")
    return blocks


@torch.no_grad()
def _zero_moments(optimizer: torch.optim.Optimizer, param: Tensor, index: tuple) -> None:
    state = optimizer.state.get(param)
    if not state:
        return
    for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
        if key in state and torch.is_tensor(state[key]) and state[key].shape == param.shape:
            state[key][index] = 0.0


@torch.no_grad()
def recycle_units(blocks: list[UnitBlock], indices: list[Tensor], generator: torch.Generator,
                  optimizer: torch.optim.Optimizer | None) -> None:
    """Recycle units ``indices[j]`` of ``blocks[j]``: re-initialise incoming weights, zero outgoing weights and the
    Adam moments of both. All incoming re-initialisations happen before any outgoing zeroing, so a recycled unit's
    outgoing weights are zero even when the next block recycles units too (their weight matrices overlap)."""
    touched: list[tuple[Tensor, tuple]] = []
    for block, idx in zip(blocks, indices):
        if idx.numel() == 0:
            continue
        lin = block.linear
        bound = 1.0 / math.sqrt(lin.in_features) if lin.in_features > 0 else 0.0
        w = torch.empty((idx.numel(), lin.in_features), device=lin.weight.device, dtype=lin.weight.dtype)
        lin.weight[idx] = w.uniform_(-bound, bound, generator=generator)
        touched.append((lin.weight, (idx,)))
        if lin.bias is not None:
            b = torch.empty(idx.numel(), device=lin.bias.device, dtype=lin.bias.dtype)
            lin.bias[idx] = b.uniform_(-bound, bound, generator=generator)
            touched.append((lin.bias, (idx,)))
        if block.norm is not None:
            if block.norm.weight is not None:
                block.norm.weight[idx] = 1.0
                touched.append((block.norm.weight, (idx,)))
            if block.norm.bias is not None:
                block.norm.bias[idx] = 0.0
                touched.append((block.norm.bias, (idx,)))
    for block, idx in zip(blocks, indices):
        if idx.numel() == 0:
            continue
        cols = block.outgoing_columns(idx)
        block.outgoing.weight[:, cols] = 0.0
        touched.append((block.outgoing.weight, (slice(None), cols)))
    if optimizer is not None:
        for param, index in touched:
            _zero_moments(optimizer, param, index)


def _record(blocks: list[UnitBlock], model: nn.Module, x: Tensor) -> list[Tensor]:
    """Per-block unit activity (mean |h|) on batch ``x``, by forward hooks on the activation modules."""
    out: list[Tensor | None] = [None] * len(blocks)
    handles = [b.activation.register_forward_hook(
        lambda m, i, o, j=j: out.__setitem__(j, blocks[j].unit_activity(o))) for j, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    if any(a is None for a in out):
        raise RuntimeError("an activation module was not called in the forward pass")
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- ReDo
class ReDo(Mitigator):
    r"""``redo``, recycling dormant neurons (Sokar et al., 2023). Every ``frequency`` steps (at steps
    ``step > 0, step % frequency == 0``) compute on the current batch x the score
    :math:`s_i = \mathbb E_x|h_i(x)| / \frac1H\sum_k \mathbb E_x|h_k(x)|` of every hidden unit; units with
    :math:`s_i \le \tau` (τ = ``strength``) are τ-dormant and are recycled (see the module docstring).
    Defaults τ = 0.1, frequency = 1000 steps (τ = 0.1 is aggressive for deep ReLU MLPs with PyTorch's default
    init; see docs/mitigators.md). ``last_recycled`` holds the count per block from the last check.
    """

    name = "redo"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, frequency: int = 1000,
                 seed: int | None = None) -> None:
        if int(frequency) < 1:
            raise ValueError(f"redo: frequency must be >= 1, got {frequency!r}")
        self.blocks = mlp_blocks(model)
        super().__init__(model, lr, strength, seed=seed)
        self.frequency = int(frequency)
        self.last_recycled: list[int] = []

    @torch.no_grad()
    def after_step(self, step: int, x: Tensor) -> None:
        if step <= 0 or step % self.frequency:
            return
        activity = _record(self.blocks, self.model, x)
        indices = [(dormant_scores(a) <= self.strength).nonzero().flatten() for a in activity]
        recycle_units(self.blocks, indices, self.generator, self.optimizer)
        self.last_recycled = [int(idx.numel()) for idx in indices]


# ------------------------------------------------------------------------------------------------- CBP
class ContinualBackprop(Mitigator):
    r"""``cbp``, continual backpropagation (Dohare et al., 2024). Every step, for every hidden unit i of a block
    (activity :math:`a_i = \mathbb E_x|h_i|` of the training forward pass on the batch, captured by a forward hook;
    recomputed on x if the hook did not fire),

    .. math::
        c_i = a_i \sum_k |W^{out}_{k i}|,\quad u_i \leftarrow \eta u_i + (1-\eta) c_i,\quad
        \hat u_i = u_i / (1 - \eta^{\text{age}_i}),\quad \text{age}_i \leftarrow \text{age}_i + 1 .

    Units older than the maturity threshold m are eligible; ``budget += ρ·#eligible`` and ``floor(budget)`` eligible
    units with the lowest û are recycled (module docstring), their utility and age reset to 0. ρ = ``strength``
    (replacement rate, default 1e-4), η = 0.99, m = 100 (Dohare et al.'s defaults).
    """

    name = "cbp"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, decay: float = 0.99,
                 maturity: int = 100, seed: int | None = None) -> None:
        self.blocks = mlp_blocks(model)
        super().__init__(model, lr, strength, seed=seed)
        self.decay, self.maturity = float(decay), int(maturity)
        dev = self.blocks[0].linear.weight.device
        self.utility = {str(j): torch.zeros(b.width, device=dev) for j, b in enumerate(self.blocks)}
        self.age = {str(j): torch.zeros(b.width, device=dev, dtype=torch.long) for j, b in enumerate(self.blocks)}
        self.budget = [0.0] * len(self.blocks)
        self._captured: list[Tensor | None] = [None] * len(self.blocks)
        self._handles = [b.activation.register_forward_hook(self._capture_hook(j)) for j, b in enumerate(self.blocks)]

    def _capture_hook(self, j: int):
        def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
            if torch.is_grad_enabled() and module.training:
                self._captured[j] = self.blocks[j].unit_activity(output)
        return hook

    def remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @torch.no_grad()
    def after_step(self, step: int, x: Tensor) -> None:
        activity = self._captured
        if any(a is None for a in activity):
            activity = _record(self.blocks, self.model, x)
        self._captured = [None] * len(self.blocks)
        indices = []
        for j, (block, a) in enumerate(zip(self.blocks, activity)):
            key = str(j)
            w_out = block.outgoing.weight.abs()
            out_mass = w_out[:, : block.width].sum(0)
            if block.crelu:
                out_mass = out_mass + w_out[:, block.width:].sum(0)
            u, age = self.utility[key], self.age[key]
            u.mul_(self.decay).add_(a * out_mass, alpha=1.0 - self.decay)
            age.add_(1)
            eligible = (age > self.maturity).nonzero().flatten()
            self.budget[j] += self.strength * eligible.numel()
            n = min(int(self.budget[j]), eligible.numel())
            idx = eligible[:0]
            if n >= 1:
                self.budget[j] -= n
                corrected = u[eligible] / (1.0 - self.decay ** age[eligible].double()).float()
                idx = eligible[corrected.argsort()[:n]]
                u[idx] = 0.0
                age[idx] = 0
            indices.append(idx)
        recycle_units(self.blocks, indices, self.generator, self.optimizer)

    def _extra_state(self) -> dict[str, Any]:
        return {"utility": clone_tensors(self.utility), "age": clone_tensors(self.age), "budget": list(self.budget)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        load_tensors(self.utility, state["utility"])
        load_tensors(self.age, state["age"])
        self.budget = [float(b) for b in state["budget"]]
