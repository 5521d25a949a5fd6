r"""Mitigators that re-inject randomness: shrink & perturb, ReDo and continual backprop (CBP).

ReDo and CBP recycle *units*: the hidden units of a block ``layer [→ norm] → activation → outgoing``.
:func:`unit_blocks` finds the blocks of

* an MLP made of ``Linear[→LayerNorm]→activation`` blocks followed by a ``Linear`` (the next block or the head),
  read from the model's leaf modules in registration order (the order of an ``nn.Sequential``): every hidden unit;
* a ResNet built from torchvision ``BasicBlock``-shaped modules (``conv1 → bn1 → activation → conv2 → bn2``, plus
  the residual sum): the channels between ``conv1`` and ``conv2`` of every block. The stem and the activations
  after the residual sums are not recycled: their channels are the residual stream, which every later block reads;
* a torchvision ``VisionTransformer``: the hidden units of every encoder MLP (``Linear → activation → Dropout →
  Linear``).

Recycling unit i of a block

* re-initialises its incoming slice ``layer.weight[i]`` (a row of a ``Linear``, a filter of a ``Conv2d``) and
  ``layer.bias[i]`` from the layer's initial distribution: PyTorch's default
  :math:`\mathcal U(-1/\sqrt{\text{fan\_in}}, 1/\sqrt{\text{fan\_in}})` for MLPs, torchvision's
  :math:`\mathcal N(0, 2/\text{fan\_out})` for ResNet convolutions and Xavier-uniform weights with
  :math:`\mathcal N(0, 10^{-12})` biases for ViT MLPs (with the mitigator's generator),
* resets its normalization entries to γ_i = 1, β_i = 0 (and a batch norm's running mean and variance to 0 and 1),
* zeroes its outgoing column(s) ``outgoing.weight[:, i]`` (and ``[:, H + i]`` after a CReLU, whose output is
  ``[relu(z), relu(-z)]``), so the network function is unchanged at the moment of recycling,
* zeroes Adam's moments (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``) at all of those entries.

Any other architecture raises ``ValueError`` at construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..diagnostics import dormant_scores, evaluating, is_activation, unit_activity
from .base import Mitigator, clone_tensors, load_tensors
from .options import CBPOptions, ReDoOptions, ShrinkPerturbOptions

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

    def __init__(self, model: nn.Module, lr: float, strength: float, *, noise_scale: float | None = ShrinkPerturbOptions.noise_scale,
                 seed: int | None = None) -> None:
        super().__init__(model, lr, strength, seed=seed)
        if self.strength > 1.0:
            raise ValueError(f"shrink-perturb: strength is a per-step shrink in [0, 1], got {strength!r}")
        lam = self.strength
        ShrinkPerturbOptions(noise_scale)  # checks it
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
    """One hidden layer of H units: ``linear`` (H outputs: a ``Linear`` or a ``Conv2d``) [→ ``norm``] →
    ``activation`` → ``outgoing``. ``probe`` is the module whose output is hooked to see the units: the activation
    itself, unless it is shared with other uses (torchvision's ``BasicBlock`` calls one ReLU twice) — then the
    module before it, and the activation is applied to a copy. ``init`` names the incoming initialisation
    (``"default"``, ``"kaiming-fan-out"``, ``"xavier"``; see the module docstring)."""

    linear: nn.Linear | nn.Conv2d
    norm: nn.LayerNorm | nn.BatchNorm2d | None
    activation: nn.Module
    outgoing: nn.Linear | nn.Conv2d
    crelu: bool
    probe: nn.Module | None = None
    init: str = "default"

    @property
    def width(self) -> int:
        return self.linear.weight.shape[0]

    @property
    def hooked(self) -> nn.Module:
        return self.activation if self.probe is None else self.probe

    def unit_activity(self, out: Tensor) -> Tensor:
        r"""Mean |h| per unit over the batch (and positions), shape (H,), from the output of :attr:`hooked`;
        after a CReLU the two halves of unit i are averaged (and CBP sums the outgoing mass of both halves)."""
        h = out if self.probe is None else self.activation(out.detach().clone())
        return unit_activity(h, self.crelu)

    def outgoing_mass(self) -> Tensor:
        r""":math:`\sum_k |W^{out}_{k i}|` per unit i (over output units and kernel positions; both CReLU halves)."""
        w = self.outgoing.weight.abs()
        mass = w.sum(0) if w.ndim == 2 else w.sum((0, *range(2, w.ndim)))
        return mass[: self.width] + mass[self.width:] if self.crelu else mass

    def outgoing_columns(self, idx: Tensor) -> Tensor:
        return torch.cat([idx, idx + self.width]) if self.crelu else idx


def residual_blocks(model: nn.Module) -> list[UnitBlock]:
    """The inner units of every torchvision-``BasicBlock``-shaped module (``conv1``, ``bn1``, ``conv2`` and an
    activation ``act`` or the shared ``relu``), and of every ViT encoder MLP; ``[]`` when there is none."""
    blocks = []
    for m in model.modules():
        conv1, bn1, conv2 = (getattr(m, k, None) for k in ("conv1", "bn1", "conv2"))
        act = getattr(m, "act", getattr(m, "relu", None))
        if isinstance(conv1, nn.Conv2d) and isinstance(bn1, nn.BatchNorm2d) and isinstance(conv2, nn.Conv2d) \
                and act is not None and is_activation(act):
            crelu = type(act).__name__ == "CReLU"
            if conv2.in_channels != (2 if crelu else 1) * conv1.out_channels:
                raise ValueError(f"{type(m).__name__}: conv2 has {conv2.in_channels} inputs for "
                                 f"{conv1.out_channels} units")
            blocks.append(UnitBlock(conv1, bn1, act, conv2, crelu, probe=bn1, init="kaiming-fan-out"))
        mlp = getattr(m, "mlp", None)
        if isinstance(mlp, nn.Sequential) and len(mlp) >= 4 and isinstance(mlp[0], nn.Linear) \
                and is_activation(mlp[1]) and isinstance(mlp[3], nn.Linear) and hasattr(m, "self_attention"):
            crelu = type(mlp[1]).__name__ == "CReLU"
            blocks.append(UnitBlock(mlp[0], None, mlp[1], mlp[3], crelu, init="xavier"))
    return blocks


def unit_blocks(model: nn.Module) -> list[UnitBlock]:
    """The recyclable blocks of ``model`` (module docstring): residual/ViT blocks if it has any, else
    :func:`mlp_blocks` (which raises ``ValueError`` for an unsupported architecture)."""
    return residual_blocks(model) or mlp_blocks(model)


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
                f"unit recycling supports MLPs of Linear[->LayerNorm]->activation blocks, torchvision-style "
                f"ResNet blocks and ViT encoder MLPs; found {type(m).__name__} at {name!r}"
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
        shape = (idx.numel(), *lin.weight.shape[1:])
        w = torch.empty(shape, device=lin.weight.device, dtype=lin.weight.dtype)
        b = None if lin.bias is None else torch.empty(idx.numel(), device=lin.bias.device, dtype=lin.bias.dtype)
        fan_in = lin.weight[0].numel()
        if block.init == "kaiming-fan-out":  # torchvision's ResNet convolutions
            w.normal_(0.0, math.sqrt(2.0 / (lin.weight.shape[0] * lin.weight[0, 0].numel())), generator=generator)
            if b is not None:
                b.zero_()
        elif block.init == "xavier":  # torchvision's ViT MLP
            w.uniform_(-1.0, 1.0, generator=generator).mul_(math.sqrt(6.0 / (fan_in + lin.weight.shape[0])))
            if b is not None:
                b.normal_(0.0, 1e-6, generator=generator)
        else:  # PyTorch's default for nn.Linear / nn.Conv2d
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            w.uniform_(-bound, bound, generator=generator)
            if b is not None:
                b.uniform_(-bound, bound, generator=generator)
        lin.weight[idx] = w
        touched.append((lin.weight, (idx,)))
        if b is not None:
            lin.bias[idx] = b
            touched.append((lin.bias, (idx,)))
        if block.norm is not None:
            if block.norm.weight is not None:
                block.norm.weight[idx] = 1.0
                touched.append((block.norm.weight, (idx,)))
            if block.norm.bias is not None:
                block.norm.bias[idx] = 0.0
                touched.append((block.norm.bias, (idx,)))
            if getattr(block.norm, "running_mean", None) is not None:
                block.norm.running_mean[idx] = 0.0
                block.norm.running_var[idx] = 1.0
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
    """Per-block unit activity (mean |h|) on batch ``x``, by forward hooks on the blocks' hooked modules."""
    out: list[Tensor | None] = [None] * len(blocks)
    handles = [b.hooked.register_forward_hook(
        lambda m, i, o, j=j: out.__setitem__(j, blocks[j].unit_activity(o))) for j, b in enumerate(blocks)]
    try:  # in eval mode: batch norm uses (and does not update) its running statistics, dropout is off
        with torch.no_grad(), evaluating(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    if any(a is None for a in out):
        raise RuntimeError("a hooked unit module was not called in the forward pass")
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------- ReDo
class ReDo(Mitigator):
    r"""``redo``, recycling dormant neurons (Sokar et al., 2023). Every ``frequency`` steps (at steps
    ``step > 0, step % frequency == 0``) compute on the current batch x (in eval mode) the score
    :math:`s_i = \mathbb E_x|h_i(x)| / \frac1H\sum_k \mathbb E_x|h_k(x)|` of every hidden unit; units with
    :math:`s_i \le \tau` (τ = ``strength``) are τ-dormant and are recycled (see the module docstring).
    Defaults τ = 0.1, frequency = 1000 steps (τ = 0.1 is aggressive for deep ReLU MLPs with PyTorch's default
    init; see docs/mitigators.md). ``last_recycled`` holds the count per block from the last check.
    """

    name = "redo"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, frequency: int = ReDoOptions.frequency,
                 seed: int | None = None) -> None:
        ReDoOptions(int(frequency))  # checks it
        self.blocks = unit_blocks(model)
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
    recomputed on x in eval mode if the hook did not fire),

    .. math::
        c_i = a_i \sum_k |W^{out}_{k i}|,\quad u_i \leftarrow \eta u_i + (1-\eta) c_i,\quad
        \hat u_i = u_i / (1 - \eta^{\text{age}_i}),\quad \text{age}_i \leftarrow \text{age}_i + 1 .

    Units older than the maturity threshold m are eligible; ``budget += ρ·#eligible`` and ``floor(budget)`` eligible
    units with the lowest û are recycled (module docstring), their utility and age reset to 0. ρ = ``strength``
    (replacement rate, default 1e-4), η = 0.99, m = 100 (Dohare et al.'s defaults).
    """

    name = "cbp"

    def __init__(self, model: nn.Module, lr: float, strength: float, *, decay: float = CBPOptions.decay,
                 maturity: int = CBPOptions.maturity, seed: int | None = None) -> None:
        CBPOptions(decay, maturity)  # checks them
        self.blocks = unit_blocks(model)
        super().__init__(model, lr, strength, seed=seed)
        self.decay, self.maturity = float(decay), int(maturity)
        dev = self.blocks[0].linear.weight.device
        self.utility = {str(j): torch.zeros(b.width, device=dev) for j, b in enumerate(self.blocks)}
        self.age = {str(j): torch.zeros(b.width, device=dev, dtype=torch.long) for j, b in enumerate(self.blocks)}
        self.budget = [0.0] * len(self.blocks)
        self._captured: list[Tensor | None] = [None] * len(self.blocks)
        self._handles = [b.hooked.register_forward_hook(self._capture_hook(j)) for j, b in enumerate(self.blocks)]

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
            out_mass = block.outgoing_mass()
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
