r"""The paper's coupled form (a differentiable loss term) and per-layer spectral norms.

.. math::
    R(\theta) = \sum_W (\sigma_1(W)^k - 1)^2 + \sum_{[W_q; W_k; W_v]} \sum_{j \in \{q,k,v\}} (\sigma_1(W_j)^k - 1)^2
        + \sum_b \lVert b\rVert_2^{2k} + \sum_\gamma \sum_i (\gamma_i - 1)^2

The coupled objective is :math:`J(\theta) + \lambda R(\theta)`. σ1 is estimated by warm-started power iteration
under ``no_grad``; the differentiable estimate is then :math:`\hat\sigma = u^\top W v` with u, v held fixed, whose
gradient is :math:`u v^\top` — the gradient of the true σ1 at convergence (Yoshida & Miyato, 2017). Computing
σ̂ itself under ``no_grad`` would silently drop the matrix terms from the gradient. A ``qkv`` tensor is several
matrices (its blocks: three equal row blocks by default, else its group's ``blocks`` entry, e.g. grouped-query
rows or GPT-2's column blocks), each with its own vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakTensorKeyDictionary

from . import functional as F
from . import kernel as K
from . import layouts as L
from .roles import ROLES, group_roles, param_groups, roles_and_layouts

_Groups = Iterable[Mapping[str, Any]]


def _as_groups(model_or_groups: nn.Module | torch.optim.Optimizer | _Groups) -> list[Mapping[str, Any]]:
    if isinstance(model_or_groups, nn.Module):
        return param_groups(model_or_groups)
    if isinstance(model_or_groups, torch.optim.Optimizer):
        return list(model_or_groups.param_groups)
    groups = list(model_or_groups)
    if groups and isinstance(groups[0], torch.Tensor):
        return [{"params": groups}]
    return groups


class SpectralPenalty:
    """The coupled regularizer R with its own warm-started power-iteration vectors.

    ``penalty = SpectralPenalty(model); loss = criterion(out, y) + lam * penalty()``.
    ``state_dict()`` / ``load_state_dict()`` carry the vectors (keyed by parameter order).
    """

    def __init__(
        self,
        model_or_groups: nn.Module | torch.optim.Optimizer | _Groups,
        k: float = 2,
        power_iterations: int = 1,
        init_iterations: int = 16,
    ) -> None:
        F.check_hyperparameters(0.0, k, power_iterations)
        self.groups = _as_groups(model_or_groups)
        for group in self.groups:
            F.check_real(group, group_roles(group))  # validate
        self.k = k
        self.power_iterations = power_iterations
        self.init_iterations = init_iterations
        self.vectors: WeakTensorKeyDictionary = WeakTensorKeyDictionary()

    def _params(self) -> list[Tensor]:
        return [p for group in self.groups for p in group["params"]]

    def __call__(self) -> Tensor:
        return _penalty(self.groups, self.k, self.power_iterations, self.init_iterations, self.vectors)

    def state_dict(self) -> dict[int, tuple[Tensor, Tensor]]:
        return {i: self.vectors[p] for i, p in enumerate(self._params()) if p in self.vectors}

    def load_state_dict(self, state: Mapping[int, tuple[Tensor, Tensor]]) -> None:
        params = self._params()
        for i, (u, v) in state.items():
            p = params[i]
            self.vectors[p] = (u.to(p.device, torch.float32), v.to(p.device, torch.float32))


_DEFAULT_VECTORS: WeakTensorKeyDictionary = WeakTensorKeyDictionary()


def spectral_penalty(
    model_or_groups: nn.Module | torch.optim.Optimizer | _Groups,
    k: float = 2,
    power_iterations: int = 1,
) -> Tensor:
    r"""The paper's regularizer R as a differentiable scalar: ``loss = J + λ·spectral_penalty(model)``.

    ``model_or_groups`` is a model (roles inferred by :func:`specopt.param_groups`), a list of parameter groups
    (their ``role`` and ``k`` keys are honoured; no role → matrices only) or an optimizer. Power-iteration vectors
    are warm-started across calls from a cache keyed weakly by parameter; use :class:`SpectralPenalty` to own them
    (e.g. to checkpoint them). A complex tensor with a role other than ``none`` raises a one-line ``ValueError``, as
    the optimizers do.
    """
    F.check_hyperparameters(0.0, k, power_iterations)
    return _penalty(_as_groups(model_or_groups), k, power_iterations, 16, _DEFAULT_VECTORS)


def _start(vectors, p: Tensor, rows: int, cols: int, blocks: int, iterations: int, init_iterations: int):
    """(u, v, iterations): the cached vectors of ``p`` when they fit its shape and role, else the deterministic start
    (one copy per block) with ``init_iterations``."""
    cached = vectors.get(p)
    shape_u, shape_v = ((rows,), (cols,)) if blocks == 1 else ((blocks, rows), (blocks, cols))
    if cached is not None and cached[0].shape == shape_u and cached[1].shape == shape_v:
        return cached[0], cached[1], iterations
    (u,), (v,) = K.initial_blocks([(rows, cols)], p.device, blocks)
    return u, v, max(iterations, init_iterations)


def _penalty(groups: list[Mapping[str, Any]], k: float, iterations: int, init_iterations: int, vectors) -> Tensor:
    terms: list[Tensor] = []
    device = None
    for group in groups:
        gk = group.get("k", k)
        for p, concrete, layout in zip(group["params"], *roles_and_layouts(group)):
            device = p.device
            if p.numel() == 0 or concrete == "none":
                continue
            if p.is_complex():
                raise F.complex_error(group, p, concrete)
            if concrete == "matrix":
                w = p.reshape(p.shape[0], -1).float()
                with torch.no_grad():
                    u, v, n = _start(vectors, p, w.shape[0], w.shape[1], 1, iterations, init_iterations)
                    u, v, _, _ = K.power_iteration(w.detach(), u, v, n)
                    vectors[p] = (u, v)
                sigma = torch.dot(u, torch.mv(w, v))  # differentiable in W, u and v fixed
                terms.append((sigma.pow(gk) - 1.0).pow(2))
            elif concrete == "qkv" and not L.is_default(layout):
                terms.append(_fused_term(p, layout, gk, iterations, init_iterations, vectors))
            elif concrete == "qkv":
                blocks = F.BLOCKS["qkv"]
                w = F.as_blocks(p, blocks)  # (3, out/3, in), differentiable
                with torch.no_grad():
                    u, v, n = _start(vectors, p, w.shape[1], w.shape[2], blocks, iterations, init_iterations)
                    u, v, _, _ = K.power_iteration(w.detach(), u, v, n)
                    vectors[p] = (u, v)
                sigma = (u.unsqueeze(-2) @ w @ v.unsqueeze(-1)).reshape(blocks)  # σ_j = u_jᵀ W_j v_j
                terms.append((sigma.pow(gk) - 1.0).pow(2).sum())
            elif concrete == "bias":
                terms.append(p.float().pow(2).sum().pow(gk))
            elif concrete == "scale":
                terms.append((p.float() - 1.0).pow(2).sum())
            else:
                raise ValueError(f"spectral_penalty has no rule for role {concrete!r}")
    if not terms:
        return torch.zeros((), device=device)
    return torch.stack(terms).sum()


def _fused_term(p: Tensor, layout: L.Layout, k: float, iterations: int, init_iterations: int, vectors) -> Tensor:
    """Σ_j (σ_j^k − 1)² over the blocks ``p.split(sizes, axis)``; vectors cached as the blocks' concatenation."""
    sizes, axis = layout
    w = p.float()
    blocks = (w.t() if axis else w).split(sizes, dim=0)  # differentiable views; column blocks as Wᵀ's row blocks
    rows, cols = [b.shape[0] for b in blocks], [b.shape[1] for b in blocks]
    with torch.no_grad():
        cached = vectors.get(p)
        if cached is not None and cached[0].shape == (sum(rows),) and cached[1].shape == (sum(cols),):
            us, vs, n = list(cached[0].split(rows)), list(cached[1].split(cols)), iterations
        else:
            us, vs = K.initial_blocks(list(zip(rows, cols)), p.device)
            n = max(iterations, init_iterations)
        us, vs, _, _ = K.power_iteration_foreach([b.detach() for b in blocks], us, vs, n)
        vectors[p] = (torch.cat(us), torch.cat(vs))
    sigma = torch.stack([torch.dot(u, torch.mv(b, v)) for b, u, v in zip(blocks, us, vs)])  # σ_j = u_jᵀ W_j v_j
    return (sigma.pow(k) - 1.0).pow(2).sum()


QKV_BLOCK_NAMES = ("q", "k", "v")
"""Suffixes of the per-block names of a three-block ``qkv`` tensor in :func:`spectral_norms`:
``"attn.qkv.weight[q]"``; a tensor of another number of blocks is reported as ``name[0]``, ``name[1]``, ..."""


def block_names(name: str, blocks: int = 3) -> list[str]:
    """The names of the blocks of the ``qkv`` tensor ``name``: ``name[q]``, ``name[k]``, ``name[v]`` for three
    blocks, ``name[0]``, ``name[1]``, ... otherwise."""
    return [f"{name}[{b}]" for b in (QKV_BLOCK_NAMES if blocks == 3 else range(blocks))]


def _matrix_params(obj: Any) -> list[tuple[str, Tensor, str, L.Layout | None]]:
    """(name, parameter, role, layout) of every non-empty matrix-like (``matrix`` or ``qkv``) parameter."""
    out = []
    for gi, group in enumerate(_as_groups(obj)):
        names = group.get("param_names") or [f"group{gi}.param{j}" for j in range(len(group["params"]))]
        out += [(n, p, r, lay) for n, p, r, lay in zip(names, group["params"], *roles_and_layouts(group))
                if r in F.BLOCKS and p.numel() > 0]
    return out


def _complex_sigma(p: Tensor, blocks: int) -> Tensor:
    r"""σ1 of each row block of a complex ``p`` (shape (blocks,), float32), through its real form: with
    :math:`W = A + iB`, :math:`\sigma_1(W) = \sigma_1\begin{pmatrix} A & -B\\ B & A\end{pmatrix}` (the real matrix
    acting on (Re x, Im x) as W acts on x), so the blocks are those :func:`specopt.functional.as_blocks` defines."""
    a, b = F.as_blocks(p.real, blocks), F.as_blocks(p.imag, blocks)  # .real/.imag: views, no dtype cast
    return torch.linalg.matrix_norm(torch.cat([torch.cat([a, -b], -1), torch.cat([b, a], -1)], -2), ord=2)


@torch.no_grad()
def spectral_norms(obj: nn.Module | torch.optim.Optimizer | _Groups, exact: bool | None = None) -> dict[str, Tensor]:
    """σ1 of every matrix-role parameter (conv kernels reshaped to out × in·kh·kw), as 0-dim float32 tensors.

    A ``qkv`` parameter is reported per block, as three entries ``"{name}[q]"``, ``"{name}[k]"`` and
    ``"{name}[v]"`` (σ1 of W_q, W_k, W_v: the matrices the ``qkv`` role regularizes, split by its layout), in that
    order (``name[0]``, ``name[1]``, ... for another number of blocks).

    * ``exact=True`` (default for a model or groups): ``torch.linalg.matrix_norm(W, ord=2)``, an SVD per matrix;
      of a complex W its true σ1 (the optimizers refuse to regularize complex tensors, see
      :func:`specopt.functional.complex_error`, but their σ1 is still reported).
    * ``exact=False`` (default for an optimizer): the cheap estimate stored by the optimizer's last power iteration
      (``spectral_sigma``, taken at the weights *before* that step); tensors not yet stepped are omitted.
    """
    if exact is None:
        exact = not isinstance(obj, torch.optim.Optimizer)
    params = _matrix_params(obj)
    if not exact and not isinstance(obj, torch.optim.Optimizer):
        raise ValueError("exact=False reads an optimizer's power-iteration state; pass the optimizer")
    out: dict[str, Tensor] = {}
    for name, p, role, layout in params:
        count = 1 if layout is None else len(layout[0])
        if exact and layout is not None and not L.is_default(layout):
            sigma = torch.stack([torch.linalg.matrix_norm(b if b.is_complex() else b.float(), ord=2)
                                 for b in p.split(layout[0], layout[1])])
        elif exact and p.is_complex():
            sigma = _complex_sigma(p, F.BLOCKS[role])
        elif exact:
            sigma = torch.linalg.matrix_norm(F.as_blocks(p, F.BLOCKS[role]), ord=2)  # (blocks,)
        else:
            st = obj.state.get(p)
            if not st or "spectral_sigma" not in st:
                continue
            sigma = st["spectral_sigma"].detach().clone()  # a copy: the optimizer updates its state in place
        if role == "qkv":
            out.update(zip(block_names(name, count), sigma.reshape(count).unbind()))
        else:
            out[name] = sigma.reshape(())
    return out


__all__ = ["QKV_BLOCK_NAMES", "ROLES", "SpectralPenalty", "block_names", "spectral_norms", "spectral_penalty"]
