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
model's :func:`specopt.named_roles`; a matrix's slice is viewed as out × in (conv kernels flattened).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import functional as F
from .optim import DEFAULT_INIT_ITERATIONS, DEFAULT_STRENGTH, resolve_strength
from .roles import ROLES

_SPECTRAL_ROLES = ("matrix", "qkv", "bias", "scale")


def _column(x: Tensor, dims: int) -> Tensor:
    """``x`` of shape (S,) viewed as (S, 1, ..., 1) with ``dims`` dimensions in all."""
    return x.reshape(x.shape[0], *([1] * (dims - 1)))


class StackedSpectralAdam:
    """Adam + decoupled spectral step for ``params`` stacked along dim 0 (see the module docstring).

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
        spectral_strength: deprecated alias of ``strength`` (a ``FutureWarning``).

    ``step()`` makes no host-device synchronisation. After construction, :meth:`reset` or :meth:`load_state_dict`
    the next step also runs the longer first power iteration and keeps it for the slices that need it
    (:attr:`fresh`); later steps run only ``power_iterations``.
    """

    def __init__(self, params: Sequence[Tensor], roles: Sequence[str], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 strength: float | Sequence[float] | Tensor = DEFAULT_STRENGTH, k: float = 2,
                 power_iterations: int = 1, init_iterations: int = DEFAULT_INIT_ITERATIONS,
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
        self.roles = list(roles)
        self.lr, self.betas, self.eps, self.k = lr, betas, eps, k
        self.power_iterations, self.init_iterations = power_iterations, init_iterations
        self.strength = strength.to(self.params[0].device)
        self.state: list[dict[str, Tensor]] = [self._fresh_state(p, r) for p, r in zip(self.params, self.roles)]
        self._maybe_fresh = True  # host-side: some slice still needs its first (longer) power iteration

    @property
    def fresh(self) -> bool:
        """Whether the next step runs the first (longer) power iteration for some slice (a host-side flag)."""
        return self._maybe_fresh

    # --- state -------------------------------------------------------------------------------------------------
    def _start_vectors(self, p: Tensor, role: str) -> tuple[Tensor, Tensor]:
        blocks = F.BLOCKS[role]
        rows, cols = p.shape[1] // blocks, p[0].numel() // p.shape[1]
        u, v = F.initial_vectors(rows, cols, p.device)
        lead = (self.slices, blocks) if blocks > 1 else (self.slices,)
        return u.expand(*lead, rows).clone(), v.expand(*lead, cols).clone()

    def _fresh_state(self, p: Tensor, role: str) -> dict[str, Tensor]:
        st = {"step": torch.zeros(self.slices, dtype=torch.float32, device=p.device),
              "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
              "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if role in F.BLOCKS:
            st["spectral_u"], st["spectral_v"] = self._start_vectors(p, role)
            st["spectral_fresh"] = torch.ones(self.slices, dtype=torch.bool, device=p.device)
        return st

    @torch.no_grad()
    def reset(self, mask: Tensor | Sequence[bool]) -> None:
        """Restart the optimizer of every slice where ``mask`` (S booleans) is true: zero moments and step count,
        power iteration from the deterministic start. Call it when those slices' parameters are re-initialized."""
        mask = torch.as_tensor(mask, dtype=torch.bool, device=self.params[0].device).flatten()
        if mask.numel() != self.slices:
            raise ValueError(f"reset needs {self.slices} booleans, got {mask.numel()}")
        for p, role, st in zip(self.params, self.roles, self.state):
            fresh = self._fresh_state(p, role)
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
    def _matrix_terms(self, p: Tensor, role: str, st: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(u, v, σ̂) at the pre-step weights, batched over slices (and q/k/v blocks)."""
        blocks = F.BLOCKS[role]
        w = p.detach().reshape(self.slices, *((blocks,) if blocks > 1 else ()), p.shape[1] // blocks, -1).float()
        u, v, sigma, _ = F.power_iteration(w, st["spectral_u"], st["spectral_v"], self.power_iterations)
        if self._maybe_fresh and self.init_iterations > self.power_iterations:
            first = F.power_iteration(w, st["spectral_u"], st["spectral_v"], self.init_iterations)[:3]
            fresh = st["spectral_fresh"]
            u, v, sigma = (torch.where(_column(fresh, x.dim()), y, x) for x, y in zip((u, v, sigma), first))
        return u, v, sigma

    @torch.no_grad()
    def step(self) -> None:
        """One Adam step on every slice, then each slice's decoupled spectral step (∇R at the pre-step weights)."""
        live = [(p, r, st) for p, r, st in zip(self.params, self.roles, self.state) if p.grad is not None]
        if not live:
            return
        pending = []
        for p, role, st in live:  # ∇R at θ_t, before the base step moves θ
            if role in F.BLOCKS:
                pending.append(self._matrix_terms(p, role, st))
            elif role == "bias":
                x = p.detach().float().clone()
                norm2 = x.flatten(1).pow(2).sum(1)
                pending.append((x, (2.0 * self.k) * norm2.pow(self.k - 1)))
            elif role == "scale":
                pending.append((p.detach().float() - 1.0, torch.full_like(self.strength, 2.0)))
            else:
                pending.append(None)

        params = [p for p, _, _ in live]
        grads = [p.grad for p in params]
        steps = [st["step"] for _, _, st in live]
        ms, vs = [st["exp_avg"] for _, _, st in live], [st["exp_avg_sq"] for _, _, st in live]
        beta1, beta2 = self.betas
        torch._foreach_add_(steps, 1.0)
        torch._foreach_lerp_(ms, grads, 1 - beta1)
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, 1 - beta2)
        bc1 = torch._foreach_sub(torch._foreach_pow(beta1, steps), 1.0)  # −(1 − β1^t)
        bc2 = torch._foreach_sqrt(torch._foreach_neg(torch._foreach_sub(torch._foreach_pow(beta2, steps), 1.0)))
        denom = torch._foreach_sqrt(vs)
        torch._foreach_div_(denom, [_column(b, d.dim()) for b, d in zip(bc2, denom)])
        torch._foreach_add_(denom, self.eps)
        updates = torch._foreach_div(ms, [_column(b, m.dim()) for b, m in zip(bc1, ms)])  # −m̂
        torch._foreach_addcdiv_(params, updates, denom, value=self.lr)  # θ − η m̂ / (√v̂ + ε)

        lr_strength = self.lr * self.strength
        for (p, role, st), terms in zip(live, pending):
            if terms is None:
                continue
            if role in F.BLOCKS:
                u, v, sigma = terms
                alpha = F.matrix_step(sigma, self.k, _column(lr_strength, sigma.dim()))
                p.sub_((alpha[..., None, None] * u[..., :, None] * v[..., None, :]).reshape(p.shape).to(p.dtype))
                st["spectral_u"].copy_(u)
                st["spectral_v"].copy_(v)
                st["spectral_fresh"].zero_()
            else:
                x, coefficient = terms
                fraction = F.vector_fraction(coefficient, lr_strength)
                p.sub_((_column(fraction, x.dim()) * x).to(p.dtype))
        self._maybe_fresh = False


__all__ = ["StackedSpectralAdam"]
