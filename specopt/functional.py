r"""Functional kernels of the decoupled spectral step.

For every regularized tensor the step is split in two halves around the base optimizer's update, so that the
gradient of the regularizer is evaluated at the *pre-step* weights θ_t (as coupled SGD would):

.. math::
    d_t &= \nabla R(\theta_t)                       &&\text{(prepare, before the base step)}\\
    \theta_{t+1} &= \mathrm{base}(\theta_t, g_t) - \eta\,\lambda\, d_t &&\text{(apply, after it)}

With ``base`` = SGD this is exactly one SGD step on :math:`J + \lambda R` (the paper's coupled form); with Adam it
is the decoupled form, like AdamW's weight decay. The directions per role are

* matrix :math:`W` (conv kernels reshaped to out × in·kh·kw), with warm-started power iteration
  :math:`v \leftarrow W^\top u/\lVert W^\top u\rVert,\; s = W v,\; \hat\sigma = \lVert s\rVert,\; u \leftarrow s/\hat\sigma`:
  :math:`d = 2k\,\hat\sigma^{k-1}(\hat\sigma^k - 1)\,u v^\top` (a rank-one update, never materialised);
* bias :math:`b`: :math:`d = 2k\,\lVert b\rVert^{2k-2}\, b`, the gradient of :math:`\lVert b\rVert^{2k}`;
* scale :math:`\gamma`: :math:`d = 2(\gamma - 1)`, the gradient of :math:`\sum_i(\gamma_i - 1)^2`.

:math:`\hat\sigma = \lVert W v\rVert \le \sigma_1(W)` for any unit :math:`v`, so the estimate never exceeds the true
spectral norm. Vectors are float32 whatever the parameter's dtype and are stored as ``spectral_u``,
``spectral_v`` and ``spectral_sigma`` in the optimizer's per-parameter state.

Non-finite values never poison the state: when an iteration produces a non-finite or zero norm (NaN/Inf weights, a
zero matrix) the previous vectors are kept and that tensor's spectral step is skipped for this step. Everything is
decided with tensor ops (``torch.where``), so the step makes no host-device synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .roles import check_role, resolve_role

_TINY = 1e-30
INIT_SEED = 0


@dataclass
class Pending:
    """Directions computed before the base step, to apply after it (one list entry per tensor)."""

    matrices: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, float, dict]] = field(default_factory=list)
    # (param, u, v, coefficient, sigma, scale, group)
    vectors: list[tuple[Tensor, Tensor, float, dict]] = field(default_factory=list)
    # (param, direction, scale, group)


def check_hyperparameters(strength: Any, k: Any, power_iterations: Any) -> None:
    """One-line ``ValueError`` for an invalid strength, k or number of power iterations."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0.0 or strength == float("inf"):
        raise ValueError(f"spectral strength must be a finite number >= 0, got {strength!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 1 <= k < float("inf"):
        raise ValueError(f"k must be a number >= 1 (the paper uses 1, 2, 4 or 8), got {k!r}")
    if isinstance(power_iterations, bool) or not isinstance(power_iterations, int) or power_iterations < 1:
        raise ValueError(f"power_iterations must be an integer >= 1, got {power_iterations!r}")


def as_matrix(param: Tensor) -> Tensor:
    """``param`` viewed as out × in (conv kernels: out × in·kh·kw), float32."""
    w = param.detach().reshape(param.shape[0], -1)
    return w if w.dtype == torch.float32 else w.float()


def initial_vectors(rows: int, cols: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Deterministic unit starting vectors (independent of the global RNG, so seeding stays the user's)."""
    gen = torch.Generator().manual_seed(INIT_SEED)
    u = torch.randn(rows, generator=gen, dtype=torch.float32)
    v = torch.randn(cols, generator=gen, dtype=torch.float32)
    return (u / u.norm().clamp_min(_TINY)).to(device), (v / v.norm().clamp_min(_TINY)).to(device)


def _safe_normalize(x: Tensor, previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x/‖x‖, ‖x‖, ok) where a zero or non-finite norm keeps ``previous``."""
    norm = torch.linalg.vector_norm(x)
    ok = torch.isfinite(norm) & (norm > _TINY)
    return torch.where(ok, x / norm.clamp_min(_TINY), previous), norm, ok


def power_iteration(w: Tensor, u: Tensor, v: Tensor, iterations: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``iterations`` warm-started power iterations on the matrix ``w`` (out × in, float32).

    Returns ``(u, v, σ̂, ok)``: unit vectors with :math:`W v = \hat\sigma u`, the estimate
    :math:`\hat\sigma = \lVert W v\rVert \le \sigma_1(W)`, and whether every iteration was finite and non-zero
    (when not, the previous vectors are returned unchanged and ``σ̂`` is 0).
    """
    ok_all = torch.ones((), dtype=torch.bool, device=w.device)
    sigma = torch.zeros((), dtype=torch.float32, device=w.device)
    for _ in range(iterations):
        v_new, _, ok_v = _safe_normalize(torch.mv(w.t(), u), v)
        s = torch.mv(w, v_new)
        u_new, sigma, ok_u = _safe_normalize(s, u)
        ok = ok_v & ok_u
        u = torch.where(ok, u_new, u)
        v = torch.where(ok, v_new, v)
        ok_all = ok_all & ok
    return u, v, torch.where(ok_all, sigma, torch.zeros_like(sigma)), ok_all


def matrix_coefficient(sigma: Tensor, k: float) -> Tensor:
    r""":math:`\partial R/\partial\sigma = 2k\,\sigma^{k-1}(\sigma^k - 1)` for :math:`R = (\sigma^k - 1)^2`."""
    return 2.0 * k * sigma.pow(k - 1) * (sigma.pow(k) - 1.0)


def bias_direction(b: Tensor, k: float) -> Tensor:
    r""":math:`\nabla_b \lVert b\rVert^{2k} = 2k\lVert b\rVert^{2k-2} b` (float32)."""
    b32 = b.detach().float()
    return 2.0 * k * torch.linalg.vector_norm(b32).pow(2 * k - 2) * b32


def scale_direction(gamma: Tensor) -> Tensor:
    r""":math:`\nabla_\gamma \sum_i(\gamma_i - 1)^2 = 2(\gamma - 1)` (float32)."""
    return 2.0 * (gamma.detach().float() - 1.0)


def _finite_or_zero(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def group_settings(group: dict, defaults: dict) -> tuple[str, float, float, int]:
    role = check_role(group.get("role", defaults.get("role", "auto")))
    strength = group.get("spectral_strength", defaults["spectral_strength"])
    k = group.get("k", defaults["k"])
    iterations = group.get("power_iterations", defaults["power_iterations"])
    check_hyperparameters(strength, k, iterations)
    return role, strength, k, iterations


@torch.no_grad()
def prepare(
    param_groups: list[dict],
    state: dict,
    defaults: dict,
    only_with_grad: bool = True,
    init_iterations: int = 16,
) -> Pending:
    """Compute ∇R at the current (pre-step) weights of every regularized tensor; see the module docstring.

    ``only_with_grad`` skips tensors without a gradient (known before the step when there is no closure); with a
    closure every tensor is prepared and :func:`apply` drops those that end up without one.
    """
    pending = Pending()
    for group in param_groups:
        role, strength, k, iterations = group_settings(group, defaults)
        if strength == 0.0 or role == "none":
            continue
        for p in group["params"]:
            if p.numel() == 0 or (only_with_grad and p.grad is None):
                continue
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(
                    "spectral regularization does not support sparse gradients; give this parameter role 'none' "
                    "(specopt.param_groups(model, roles={'<name>': 'none'})) or use dense gradients"
                )
            concrete = resolve_role(role, p)
            if concrete == "none":
                continue
            if concrete == "matrix":
                w = as_matrix(p)
                st = state.get(p) or {}
                u, v = st.get("spectral_u"), st.get("spectral_v")
                n = iterations
                if u is None or v is None:
                    u, v = initial_vectors(w.shape[0], w.shape[1], w.device)
                    n = max(iterations, init_iterations)
                u, v, sigma, ok = power_iteration(w, u, v, n)
                coef = torch.where(ok, _finite_or_zero(matrix_coefficient(sigma, k)), torch.zeros_like(sigma))
                pending.matrices.append((p, u, v, coef, sigma, strength, group))
            else:
                d = bias_direction(p, k) if concrete == "bias" else scale_direction(p)
                pending.vectors.append((p, _finite_or_zero(d), strength, group))
    return pending


def _step_scale(lr: Any, strength: float, found_inf: Tensor | None) -> Any:
    scale = -lr * strength
    if found_inf is not None:
        scale = scale * (1.0 - found_inf.float())
    return scale


@torch.no_grad()
def apply(pending: Pending, state: dict, found_inf: Tensor | None = None) -> None:
    """θ ← θ − lr·λ·d for every prepared tensor that has a gradient; store the power-iteration state.

    ``found_inf`` (set by ``torch.amp.GradScaler`` on optimizers that unscale themselves) zeroes the step.
    """
    for p, u, v, coef, sigma, strength, group in pending.matrices:
        if p.grad is None:
            continue
        st = state[p]
        st["spectral_u"], st["spectral_v"], st["spectral_sigma"] = u, v, sigma
        scaled_v = v * (coef * _step_scale(group["lr"], strength, found_inf))
        w = p.detach()
        if p.dtype == torch.float32 and w.is_contiguous():
            w.view(w.shape[0], -1).addr_(u, scaled_v)
        else:
            w.add_(torch.outer(u, scaled_v).reshape(w.shape).to(w.dtype))
    for p, d, strength, group in pending.vectors:
        if p.grad is None:
            continue
        p.detach().add_((d * _step_scale(group["lr"], strength, found_inf)).to(p.dtype))


def fill_group_defaults(group: dict, defaults: dict) -> None:
    """Give ``group`` the spectral keys it lacks (``role``, ``spectral_strength``, ``k``, ``power_iterations``)."""
    for key in ("role", "spectral_strength", "k", "power_iterations"):
        group.setdefault(key, defaults[key])
    group_settings(group, defaults)  # validate


SPECTRAL_STATE_KEYS = ("spectral_u", "spectral_v", "spectral_sigma")


def split_spectral_state(state_dict: dict) -> tuple[dict, dict[Any, dict[str, Tensor]]]:
    """Remove the power-iteration entries from an optimizer ``state_dict`` (a shallow copy is returned).

    ``Optimizer.load_state_dict`` casts floating state to the parameter's dtype; the vectors must stay float32, so
    they are loaded separately by :func:`restore_spectral_state`.
    """
    state = {}
    spectral: dict[Any, dict[str, Tensor]] = {}
    for pid, st in state_dict["state"].items():
        rest = {key: val for key, val in st.items() if key not in SPECTRAL_STATE_KEYS}
        found = {key: val for key, val in st.items() if key in SPECTRAL_STATE_KEYS}
        if found:
            spectral[pid] = found
        state[pid] = rest
    return {**state_dict, "state": state}, spectral


def restore_spectral_state(
    saved_groups: list[dict], groups: list[dict], state: dict, spectral: dict[Any, dict[str, Tensor]]
) -> None:
    """Put the float32 power-iteration entries back, on each parameter's device."""
    id_map = {}
    for saved, group in zip(saved_groups, groups):
        id_map.update(zip(saved["params"], group["params"]))
    for pid, entries in spectral.items():
        p = id_map[pid]
        st = state[p]
        for key, val in entries.items():
            st[key] = val.to(device=p.device, dtype=torch.float32).clone()
