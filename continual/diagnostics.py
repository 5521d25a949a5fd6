r"""Plasticity diagnostics measured at every task end (paper Sections 3.3, 5.2 and Appendix C.6).

:func:`task_end_diagnostics` returns

==========================  =====================================================================================
key                         definition
==========================  =====================================================================================
sigma_max, sigma_mean       max / mean over weight matrices W_l of σ1(W_l) (exact SVD; conv kernels reshaped to
                            out × in·kh·kw; the matrices are the ``matrix`` role of :func:`specopt.named_roles`
                            and the q, k, v blocks of its ``qkv`` role, as :func:`weight_matrices` lists them)
stable_rank                 mean over the same matrices of ‖W‖_F² / σ1(W)²
weight_norm                 ‖θ‖₂ over all parameters
distance_from_init          ‖θ − θ0‖₂ over all parameters
grad_erank                  erank(G) = exp(−Σ p_i log p_i), p_i = σ_i(G)/Σ_j σ_j(G) (Roy & Vetterli, 2007)
grad_condition              σ1(G)/σ_m(G), m = min(n, P) (inf when σ_m = 0)
dormant_fraction            fraction of τ-dormant units over all activation modules (ReDo's definition, τ = 0)
representation_change       mean over probe x of ‖φ(x) − φ_prev(x)‖₂, φ = ``model.features`` (NaN the first time)
==========================  =====================================================================================

G (n × P) is the matrix of per-example gradients of the cross-entropy loss on the first ``grad_examples`` probe
examples (default 64), computed with ``torch.func`` (``functional_call`` + ``vmap(grad)``). P is capped by
``grad_param_budget`` (default 500 000): whole modules are taken from the *last* registered one backwards while
they fit (always at least one), so a 4×256 MLP is measured in full and a ResNet-18 on its last layers.

The paper writes erank as Σ σ̄ log σ̄; we use Roy & Vetterli's definition, the exponential of the entropy, which is
what "effective rank" denotes (it lies in [1, rank G]).

Every forward pass runs in ``eval`` mode under ``no_grad`` (the model's mode is restored afterwards): batch norm
uses its running statistics, so per-example gradients are well defined (train-mode batch norm couples the
examples of a batch) and no running statistic is updated by the diagnostics. Activations are found as modules
(``nn.ReLU`` etc., or any module whose class name is ``CReLU``); activations applied functionally are not seen.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import specopt

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.ELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Mish)

DIAGNOSTICS = (
    "sigma_max", "sigma_mean", "stable_rank", "weight_norm", "distance_from_init",
    "grad_erank", "grad_condition", "dormant_fraction", "representation_change",
)


def is_activation(module: nn.Module) -> bool:
    """Activation modules: the usual ``torch.nn`` ones, and any module whose class name is ``CReLU``."""
    return isinstance(module, _ACTIVATIONS) or type(module).__name__ == "CReLU"


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block, then every submodule's ``training`` flag as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode


# ------------------------------------------------------------------------------------------------- spectra
def as_matrix(w: Tensor) -> Tensor:
    """A weight tensor as a matrix out × (everything else) (conv kernels: out × in·kh·kw)."""
    return w.detach().reshape(w.shape[0], -1)


def stable_rank(w: Tensor) -> float:
    r"""Stable rank :math:`\lVert W\rVert_F^2 / \sigma_1(W)^2` (0 for a zero matrix)."""
    m = as_matrix(w).double()
    s1 = torch.linalg.matrix_norm(m, ord=2)
    return float(m.pow(2).sum() / s1.pow(2)) if s1 > 0 else 0.0


def weight_matrices(model: nn.Module) -> dict[str, Tensor]:
    """The matrices spectral regularization acts on: parameters with the ``matrix`` role (Linear/Conv/Embedding
    weights; not normalization scales) by name, and each block of a ``qkv`` parameter (a fused attention
    projection such as ``nn.MultiheadAttention.in_proj_weight``, split as the model declares) as ``"{name}[q]"``,
    ``"{name}[k]"``, ``"{name}[v]"`` — the names :func:`specopt.spectral_norms` gives them."""
    out: dict[str, Tensor] = {}
    for t in specopt.roles.tag(model):
        if t.param.numel() == 0:
            continue
        if t.role == "matrix":
            out[t.name] = t.param
        elif t.role == "qkv":  # its blocks: three equal row blocks, or the layout the model declares
            sizes, axis = (t.blocks["sizes"], t.blocks["axis"]) if t.blocks else ((t.param.shape[0] // 3,) * 3, 0)
            out.update(zip(specopt.penalty.block_names(t.name, len(sizes)), t.param.split(sizes, dim=axis)))
    return out


def spectral_summary(model: nn.Module) -> dict[str, float]:
    """``sigma_max``, ``sigma_mean`` and ``stable_rank`` over the model's weight matrices (exact)."""
    mats = weight_matrices(model)
    if not mats:
        return {"sigma_max": math.nan, "sigma_mean": math.nan, "stable_rank": math.nan}
    sig = torch.stack([torch.linalg.matrix_norm(as_matrix(w).double(), ord=2) for w in mats.values()])
    ranks = [stable_rank(w) for w in mats.values()]
    return {"sigma_max": float(sig.max()), "sigma_mean": float(sig.mean()), "stable_rank": sum(ranks) / len(ranks)}


def singular_values(g: Tensor) -> Tensor:
    """All min(n, P) singular values of ``g`` (n × P), descending, in float64.

    For wide matrices (P > 4n) via the eigenvalues of the n × n Gram matrix G Gᵀ (σ = √λ), else by SVD.
    """
    g = g.detach().double()
    if g.shape[1] > 4 * g.shape[0]:
        ev = torch.linalg.eigvalsh(g @ g.T).clamp_min(0.0)
        return ev.sqrt().flip(0)
    return torch.linalg.svdvals(g)


def effective_rank(s: Tensor) -> float:
    r"""Effective rank :math:`\exp(-\sum_i p_i\log p_i)`, :math:`p_i = \sigma_i/\sum_j\sigma_j` (0 log 0 = 0)."""
    s = s.double().clamp_min(0.0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def condition_number(s: Tensor) -> float:
    """σ_max/σ_min over the given singular values (inf if σ_min = 0, NaN if all are 0)."""
    s = s.double()
    hi, lo = float(s.max()), float(s.min())
    if hi == 0.0:
        return math.nan
    return hi / lo if lo > 0 else math.inf


# ------------------------------------------------------------------------------------------------- gradients
def last_layers(model: nn.Module, budget: int) -> list[str]:
    """Names of the parameters of the last registered modules whose total size fits ``budget`` (≥ 1 module)."""
    by_module: dict[str, list[tuple[str, int]]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_module.setdefault(name.rpartition(".")[0], []).append((name, p.numel()))
    chosen: list[str] = []
    total = 0
    for params in reversed(list(by_module.values())):
        size = sum(n for _, n in params)
        if chosen and total + size > budget:
            break
        chosen = [n for n, _ in params] + chosen
        total += size
    return chosen


def per_example_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    param_names: list[str] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy,
) -> Tensor:
    r"""Per-example gradient matrix G (n × P): row i is :math:`\nabla_\theta \ell(f_\theta(x_i), y_i)` flattened,
    over ``param_names`` (default all trainable parameters, in ``named_parameters`` order), computed with
    ``vmap(grad(...))`` over ``functional_call`` in eval mode."""
    named = dict(model.named_parameters())
    names = [n for n, p in named.items() if p.requires_grad] if param_names is None else list(param_names)
    params = {n: named[n].detach() for n in names}
    fixed = {n: p.detach() for n, p in named.items() if n not in params}
    buffers = dict(model.named_buffers())

    def loss_one(theta: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        out = functional_call(model, (theta, fixed, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    with evaluating(model), warnings.catch_warnings():
        # torch falls back to a loop for attention's backward under vmap (vit-tiny): correct, only slower
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        grads = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([grads[n].reshape(x.shape[0], -1) for n in names], dim=1)


# ------------------------------------------------------------------------------------------------- units
def unit_activity(h: Tensor, crelu: bool = False) -> Tensor:
    r"""Mean |h| per unit over the batch (and spatial/sequence positions): units are channels (dim 1) of 4-D
    conv activations, the last dim otherwise. After a CReLU the two halves of unit i are averaged."""
    h = h.detach().abs()
    a = h.transpose(0, 1).reshape(h.shape[1], -1).mean(1) if h.ndim == 4 else h.reshape(-1, h.shape[-1]).mean(0)
    if crelu and a.numel() % 2 == 0:
        half = a.numel() // 2
        a = 0.5 * (a[:half] + a[half:])
    return a


def dormant_scores(activity: Tensor) -> Tensor:
    r"""ReDo's score :math:`s_i = a_i / (\frac1H\sum_k a_k)`, :math:`a_i = \mathbb E_x|h_i(x)|` (0 where all a = 0)."""
    mean = activity.mean()
    return activity / mean if mean > 0 else torch.zeros_like(activity)


def dormant_fraction(model: nn.Module, x: Tensor, tau: float = 0.0) -> float:
    """Fraction of τ-dormant units (score ≤ τ) over every call of every activation module on batch ``x``."""
    counts = [0, 0]

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        s = dormant_scores(unit_activity(output, type(module).__name__ == "CReLU"))
        counts[0] += int((s <= tau).sum())
        counts[1] += s.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if is_activation(m)]
    try:
        with evaluating(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return counts[0] / counts[1] if counts[1] else math.nan


def representation_change(current: Tensor, previous: Tensor | None) -> float:
    """Mean over examples of ‖φ(x) − φ_prev(x)‖₂ (NaN without a previous representation)."""
    if previous is None:
        return math.nan
    if previous.shape != current.shape:
        raise ValueError(f"representation shapes differ: {tuple(previous.shape)} vs {tuple(current.shape)}")
    diff = current.detach().double() - previous.detach().to(current.device).double()
    return float(diff.flatten(1).norm(dim=1).mean())


# ------------------------------------------------------------------------------------------------- all at once
def task_end_diagnostics(
    model: nn.Module,
    init_params: dict[str, Tensor],
    probe_x: Tensor,
    probe_y: Tensor,
    prev_representation: Tensor | None,
    *,
    representation_x: Tensor | None = None,
    grad_examples: int = 64,
    grad_param_budget: int = 500_000,
    tau: float = 0.0,
) -> tuple[dict[str, float], Tensor]:
    """All diagnostics of the module docstring, and the representation ``model.features(representation_x)``
    (detached, to pass back as ``prev_representation`` at the next task end). ``representation_x`` (default
    ``probe_x``) must be the same images at every task end, so that the change compares like with like; gradients
    and dormant units use the current task's ``probe_x``. ``init_params`` maps parameter names to θ0."""
    out = spectral_summary(model)
    named = dict(model.named_parameters())
    missing = sorted(set(named) - set(init_params))
    if missing:
        raise KeyError(f"init_params lacks parameters {missing[:5]}")
    with torch.no_grad():
        out["weight_norm"] = math.sqrt(sum(float(p.double().pow(2).sum()) for p in named.values()))
        out["distance_from_init"] = math.sqrt(sum(
            float((p.double() - init_params[n].to(p.device).double()).pow(2).sum()) for n, p in named.items()))
    n = min(grad_examples, probe_x.shape[0])
    g = per_example_gradients(model, probe_x[:n], probe_y[:n], last_layers(model, grad_param_budget))
    s = singular_values(g)
    out["grad_erank"] = effective_rank(s)
    out["grad_condition"] = condition_number(s)
    out["dormant_fraction"] = dormant_fraction(model, probe_x, tau)
    with evaluating(model), torch.no_grad():
        rep = model.features(probe_x if representation_x is None else representation_x).detach()
    out["representation_change"] = representation_change(rep, prev_representation)
    return {k: out[k] for k in DIAGNOSTICS}, rep
