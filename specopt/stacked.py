r"""Many independent models trained as one: Adam and the decoupled spectral step on *stacked* parameters.

A stacked parameter holds one tensor per model along its leading dimension, shape ``(S, *shape)`` — S seeds of a
network, or S agents of a reinforcement-learning run that share one batched forward pass. Every model keeps its own
optimizer state and its own strength; :class:`StackedSpectralAdam` is, slice by slice, exactly
:class:`specopt.SpectralAdam` (``strength`` λ_s of slice s; λ_s = 0 is plain Adam):

.. math::
    \theta_{s,t+1} = \mathrm{Adam}(\theta_{s,t}, g_{s,t}) - \eta\,\lambda_s\,\nabla R(\theta_{s,t})

with the same truncated rank-one matrix step, bias and scale steps (:mod:`specopt.functional`) and the same
deterministic power-iteration start. The bias corrections use each slice's own step count, so
:meth:`StackedSpectralAdam.reset` can restart some models (the *resets* baseline of RL) while the others continue:
a reset slice is from then on exactly a freshly built optimizer on that slice.

Roles are given per parameter (``"matrix"``, ``"qkv"``, ``"bias"``, ``"scale"`` or ``"none"``), usually those of one
model's :func:`specopt.named_roles`; a matrix's slice is viewed as out × in (conv kernels flattened). A ``qkv``
slice is three equal row blocks unless ``blocks`` gives its layout (the ``blocks`` entries of that model's
:func:`specopt.param_groups`: ``{"sizes": (...), "axis": 0 or 1}``); then u and v are stored as the concatenation of
the blocks' vectors, (S, Σ rows_j) and (S, Σ cols_j), column blocks iterated as the row blocks of Wᵀ as in
:mod:`specopt.functional`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from . import kernel as K
from . import layouts as L
from .optim import DEFAULT_INIT_ITERATIONS, DEFAULT_STRENGTH, resolve_strength
from .roles import ROLES

_SPECTRAL_ROLES = ("matrix", "qkv", "bias", "scale")


def _column(x: Tensor, dims: int) -> Tensor:
    """``x`` of shape (S,) viewed as (S, 1, ..., 1) with ``dims`` dimensions in all."""
    return x.reshape(x.shape[0], *([1] * (dims - 1)))


class StackedSpectralAdam:
    r"""Adam + decoupled spectral step for ``params`` stacked along dim 0 (see the module docstring).

    Args:
        params: stacked parameters, each of shape ``(S, ...)`` with the same S; their ``.grad`` is used.
        roles: one role per parameter (``specopt.ROLES`` without ``"auto"``).
        lr: Adam's learning rate, shared by all slices.
        betas: Adam's, shared by all slices.
        eps: Adam's, shared by all slices.
        strength: λ, one number for all slices or a sequence / 1-D tensor of S numbers (0 = plain Adam).
        k: as in :class:`specopt.SpectralAdam`.
        power_iterations: as in :class:`specopt.SpectralAdam`.
        init_iterations: as in :class:`specopt.SpectralAdam`.
        blocks: optional, one entry per parameter: the layout of a ``qkv`` parameter's slices (``None``: three
            equal row blocks), as in the ``blocks`` of :func:`specopt.param_groups`.
        pull: as in :class:`specopt.SpectralAdam` (``"two-sided"`` or ``"one-sided"``), shared by all slices.
        precondition: as in :class:`specopt.SpectralAdam` (the step divided by each slice's Adam
            :math:`\sqrt{\hat v}+\epsilon`), shared by all slices.
        spectral_strength: deprecated alias of ``strength`` (a ``FutureWarning``).

    ``step()`` makes no host-device synchronisation. After construction, :meth:`reset` or :meth:`load_state_dict`
    the next step also runs the longer first power iteration and keeps it for the slices that need it
    (:attr:`fresh`); later steps run only ``power_iterations``.
    """

    def __init__(self, params: Sequence[Tensor], roles: Sequence[str], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 strength: float | Sequence[float] | Tensor = DEFAULT_STRENGTH, k: float = 2,
                 power_iterations: int = 1, init_iterations: int = DEFAULT_INIT_ITERATIONS,
                 blocks: Sequence[Any] | None = None, pull: str = "two-sided", precondition: bool = False,
                 spectral_strength: float | Sequence[float] | Tensor | None = None) -> None:
        strength = resolve_strength("StackedSpectralAdam", strength, spectral_strength)
        self.params = list(params)
        if not self.params:
            raise ValueError("StackedSpectralAdam got no parameters")
        if len(roles) != len(self.params):
            raise ValueError(f"got {len(roles)} roles for {len(self.params)} parameters")
        for p, role in zip(self.params, roles):
            if role not in ROLES or role == "auto":
                raise ValueError(f"unknown role {role!r}; valid: {', '.join(r for r in ROLES if r != 'auto')}")
            if role != "none" and p.is_complex():
                raise F.complex_error({"params": self.params}, p, role)
        self.slices = self.params[0].shape[0]
        if any(p.dim() < 1 or p.shape[0] != self.slices for p in self.params):
            raise ValueError(f"every stacked parameter needs the same leading dimension ({self.slices})")
        if not lr > 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps >= 0:
            raise ValueError(f"invalid Adam settings lr={lr}, betas={betas}, eps={eps}")
        strength = torch.as_tensor(strength, dtype=torch.float32).flatten().cpu()
        if strength.numel() == 1:
            strength = strength.expand(self.slices).clone()
        if strength.numel() != self.slices or not bool(torch.isfinite(strength).all() and (strength >= 0).all()):
            raise ValueError(f"strength must be one number or {self.slices} numbers, each finite and >= 0")
        F.check_hyperparameters(1.0, k, power_iterations, init_iterations)
        F.check_form(pull, precondition)
        self.one_sided, self.precondition = pull == "one-sided", precondition
        self.roles = list(roles)
        if blocks is not None and len(blocks) != len(self.params):
            raise ValueError(f"got {len(blocks)} blocks entries for {len(self.params)} parameters")
        self.layouts: list[L.Layout | None] = [
            L.check_spec(blocks[j] if blocks is not None else None, p[0], f"parameter {j}") if r == "qkv" else None
            for j, (p, r) in enumerate(zip(self.params, self.roles))]
        self.lr, self.betas, self.eps, self.k = lr, betas, eps, k
        self.power_iterations, self.init_iterations = power_iterations, init_iterations
        self.strength = strength.to(self.params[0].device)
        self.state: list[dict[str, Tensor]] = [self._fresh_state(j) for j in range(len(self.params))]
        self._maybe_fresh = True  # host-side: some slice still needs its first (longer) power iteration

    @property
    def fresh(self) -> bool:
        """Whether the next step runs the first (longer) power iteration for some slice (a host-side flag)."""
        return self._maybe_fresh

    # --- state -------------------------------------------------------------------------------------------------
    def _general(self, j: int) -> bool:
        layout = self.layouts[j]
        return layout is not None and not L.is_default(layout)

    def _shapes(self, j: int) -> list[tuple[int, int]]:
        """(rows, cols) of each block as iterated: column blocks as the row blocks of the slice's transpose."""
        sizes, axis = self.layouts[j]
        p = self.params[j]
        return [(s, p.shape[2] if axis == 0 else p.shape[1]) for s in sizes]

    def _blocks(self, j: int, w: Tensor) -> tuple[Tensor, ...]:
        """The blocks of a stacked fused tensor ``w`` (S, rows, cols), each (S, size_j, ·): views of ``w``."""
        sizes, axis = self.layouts[j]
        return (w.transpose(1, 2) if axis else w).split(sizes, dim=1)

    def _start_vectors(self, j: int) -> tuple[Tensor, Tensor]:
        p, role = self.params[j], self.roles[j]
        if self._general(j):  # concatenated per-block starts, (S, Σ rows_j) and (S, Σ cols_j)
            us, vs = K.initial_blocks(self._shapes(j), p.device)
            return torch.cat(us).expand(self.slices, -1).clone(), torch.cat(vs).expand(self.slices, -1).clone()
        blocks = F.BLOCKS[role]
        rows, cols = p.shape[1] // blocks, p[0].numel() // p.shape[1]
        u, v = K.initial_vectors(rows, cols, p.device)
        lead = (self.slices, blocks) if blocks > 1 else (self.slices,)
        return u.expand(*lead, rows).clone(), v.expand(*lead, cols).clone()

    def _fresh_state(self, j: int) -> dict[str, Tensor]:
        p, role = self.params[j], self.roles[j]
        st = {"step": torch.zeros(self.slices, dtype=torch.float32, device=p.device),
              "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
              "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if role in F.BLOCKS:
            st["spectral_u"], st["spectral_v"] = self._start_vectors(j)
            st["spectral_fresh"] = torch.ones(self.slices, dtype=torch.bool, device=p.device)
        return st

    @torch.no_grad()
    def reset(self, mask: Tensor | Sequence[bool]) -> None:
        """Restart the optimizer of every slice where ``mask`` (S booleans) is true: zero moments and step count,
        power iteration from the deterministic start. Call it when those slices' parameters are re-initialized."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.params[0].device).flatten()
        if mask.numel() != self.slices:
            raise ValueError(f"reset needs {self.slices} booleans, got {mask.numel()}")
        for j, st in enumerate(self.state):
            fresh = self._fresh_state(j)
            for key, value in st.items():
                value.copy_(torch.where(_column(mask, value.dim()), fresh[key], value))
        self._maybe_fresh = True

    def state_dict(self) -> dict[str, Any]:
        return {"state": [{k: v.clone() for k, v in st.items()} for st in self.state],
                "strength": self.strength.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["state"]
        if len(saved) != len(self.state) or any(st.keys() != sv.keys() for st, sv in zip(self.state, saved)):
            raise ValueError("the saved state does not match these parameters and roles")
        for st, sv in zip(self.state, saved):
            for key, value in st.items():
                if value.shape != sv[key].shape:
                    raise ValueError(f"saved state {key!r} has shape {tuple(sv[key].shape)}, expected {tuple(value.shape)}")
                value.copy_(sv[key])
        self.strength.copy_(state_dict["strength"])
        self._maybe_fresh = True

    # --- the step ----------------------------------------------------------------------------------------------
    def _iterate(self, w: Tensor, u0: Tensor, v0: Tensor, st: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        u, v, sigma, _ = K.power_iteration(w, u0, v0, self.power_iterations)
        if self._maybe_fresh and self.init_iterations > self.power_iterations:
            first = K.power_iteration(w, u0, v0, self.init_iterations)[:3]
            fresh = st["spectral_fresh"]
            u, v, sigma = (torch.where(_column(fresh, x.dim()), y, x) for x, y in zip((u, v, sigma), first))
        return u, v, sigma

    def _matrix_terms(self, j: int, st: dict[str, Tensor]) -> tuple[Any, Any, Tensor]:
        """(u, v, σ̂) at the pre-step weights, batched over slices (and q/k/v blocks); for another layout, the
        lists of the blocks' u_j (S, m_j) and v_j (S, n_j) and σ̂ (S, b)."""
        p, role = self.params[j], self.roles[j]
        if self._general(j):
            shapes = self._shapes(j)
            u0s = st["spectral_u"].split([m for m, _ in shapes], dim=-1)
            v0s = st["spectral_v"].split([n for _, n in shapes], dim=-1)
            out = [self._iterate(w.float(), u0, v0, st) for w, u0, v0 in zip(self._blocks(j, p.detach()), u0s, v0s)]
            return [o[0] for o in out], [o[1] for o in out], torch.stack([o[2] for o in out], dim=-1)
        blocks = F.BLOCKS[role]
        w = p.detach().reshape(self.slices, *((blocks,) if blocks > 1 else ()), p.shape[1] // blocks, -1).float()
        return self._iterate(w, st["spectral_u"], st["spectral_v"], st)

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every slice, then each slice's decoupled spectral step (∇R at the pre-step weights).

        The math is :mod:`specopt.kernel`'s, batched over the slice dimension: :func:`~specopt.kernel.power_iteration`,
        :func:`~specopt.kernel.matrix_step` and :func:`~specopt.kernel.rank_one` for matrices (per q/k/v block),
        :func:`~specopt.kernel.bias_coefficient` and :func:`~specopt.kernel.vector_fraction` for biases and scales."""
        live = [(j, p, r, st) for j, (p, r, st) in enumerate(zip(self.params, self.roles, self.state))
                if p.grad is not None]
        if not live:
            return
        pending = []
        for j, p, role, st in live:  # ∇R at θ_t, before the base step moves θ
            if role in F.BLOCKS:
                pending.append(self._matrix_terms(j, st))
            elif role == "bias":
                x = p.detach().float().clone()
                pending.append((x, K.bias_coefficient(list(x.flatten(1).unbind()), self.k)))
            elif role == "scale":
                x = p.detach().float() - 1.0
                pending.append((x.clamp_min(0.0) if self.one_sided else x, torch.full_like(self.strength, 2.0)))
            else:
                pending.append(None)
        adam_per_slice_([p for _, p, _, _ in live], [st for *_, st in live], self.lr, self.betas, self.eps)

        lr_strength = self.lr * self.strength
        for (j, p, role, st), terms in zip(live, pending):
            if terms is None:
                continue
            d = (K.adam_denominator(st["exp_avg_sq"], _column(st["step"], p.dim()), self.betas[1], self.eps)
                 if self.precondition else None)
            if role in F.BLOCKS:
                u, v, sigma = terms
                ls = _column(lr_strength, sigma.dim())
                if d is not None:  # ηλρ: Adam's step on the penalty projected on u vᵀ, per slice and block
                    if self._general(j):
                        ls = ls * torch.stack([K.adam_weight(u_b, v_b, d_b) for u_b, v_b, d_b
                                               in zip(u, v, self._blocks(j, d.reshape(self.slices, p.shape[1], -1)))],
                                              dim=-1)
                    else:
                        ls = ls * K.adam_weight(u, v, d.reshape(*u.shape, -1))
                alpha = K.matrix_step(sigma, self.k, ls, self.one_sided)  # (S,), (S, b)
                if self._general(j):  # block by block: W_j ← W_j − α_j u_j v_jᵀ per slice
                    for b, (block, u_b, v_b) in enumerate(zip(self._blocks(j, p), u, v)):
                        block.add_(K.rank_one(u_b, v_b, alpha[:, b]).to(p.dtype))
                    u, v = torch.cat(u, dim=-1), torch.cat(v, dim=-1)
                else:
                    p.add_(K.rank_one(u, v, alpha).reshape(p.shape).to(p.dtype))
                st["spectral_u"].copy_(u)
                st["spectral_v"].copy_(v)
                st["spectral_fresh"].zero_()
            else:
                x, coefficient = terms
                if d is not None:  # element by element: f = min(1, ηλc/D)
                    fraction = K.vector_fraction(_column(coefficient, x.dim()) / d, _column(lr_strength, x.dim()))
                else:
                    fraction = _column(K.vector_fraction(coefficient, lr_strength), x.dim())
                p.sub_((fraction * x).to(p.dtype))
        self._maybe_fresh = False


def adam_per_slice_(params: list[Tensor], states: list[dict[str, Tensor]], lr: float, betas: tuple[float, float],
                    eps: float) -> None:
    r"""Adam on stacked parameters, in place, with one step count per slice (``state["step"]``, shape (S,)):

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        \theta_s \leftarrow \theta_s - \eta\,\frac{m_s/(1-\beta_1^{t_s})}{\sqrt{v_s/(1-\beta_2^{t_s})} + \epsilon}

    ``torch.optim.adam`` keeps one scalar step per tensor; a slice restarted by :meth:`StackedSpectralAdam.reset`
    needs its own bias corrections, hence this foreach form (the same ops as ``torch.optim.Adam(foreach=True)``)."""
    grads = [p.grad for p in params]
    steps = [st["step"] for st in states]
    ms, vs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
    beta1, beta2 = betas
    torch._foreach_add_(steps, 1.0)
    torch._foreach_lerp_(ms, grads, 1 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, 1 - beta2)
    bc1 = torch._foreach_sub(torch._foreach_pow(beta1, steps), 1.0)  # −(1 − β1^t)
    bc2 = torch._foreach_sqrt(torch._foreach_neg(torch._foreach_sub(torch._foreach_pow(beta2, steps), 1.0)))
    denom = torch._foreach_sqrt(vs)
    torch._foreach_div_(denom, [_column(b, d.dim()) for b, d in zip(bc2, denom)])
    torch._foreach_add_(denom, eps)
    updates = torch._foreach_div(ms, [_column(b, m.dim()) for b, m in zip(bc1, ms)])  # −m̂
    torch._foreach_addcdiv_(params, updates, denom, value=lr)  # θ − η m̂ / (√v̂ + ε)


__all__ = ["StackedSpectralAdam", "adam_per_slice_"]
