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
decided with tensor ops (``torch.where``), so the step makes no host-device synchronisation. On CPU, where reading
a tensor costs no synchronisation, the common all-finite case is detected with one ``.all()`` and the per-matrix
coefficients are read with one ``.tolist()``, which saves a few dozen small dispatches per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .roles import group_roles

_TINY = 1e-30
INIT_SEED = 0


@dataclass
class Pending:
    """Directions computed before the base step, to apply after it (batched per group and role)."""

    matrices: list[tuple[list[Tensor], list[Tensor], list[Tensor], Tensor, Tensor, float, dict]] = field(
        default_factory=list
    )  # (params, us, vs, coefficients (n,), sigmas (n,), strength, group)
    vectors: list[tuple[list[Tensor], list[Tensor], float, dict]] = field(default_factory=list)
    # (params, directions, strength, group)


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
    w = param.reshape(param.shape[0], -1)  # callers hold no_grad: no autograd history, no detach needed
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
    if k == 1:
        return 2.0 * (sigma - 1.0)
    pk1 = sigma.pow(k - 1)
    return (2.0 * k) * pk1 * (pk1 * sigma - 1.0)


def bias_direction(b: Tensor, k: float) -> Tensor:
    r""":math:`\nabla_b \lVert b\rVert^{2k} = 2k\lVert b\rVert^{2k-2} b` (float32)."""
    b32 = b.detach().float()
    return 2.0 * k * torch.linalg.vector_norm(b32).pow(2 * k - 2) * b32


def scale_direction(gamma: Tensor) -> Tensor:
    r""":math:`\nabla_\gamma \sum_i(\gamma_i - 1)^2 = 2(\gamma - 1)` (float32)."""
    return 2.0 * (gamma.detach().float() - 1.0)


def group_settings(group: dict, defaults: dict) -> tuple[float, float, int]:
    """(strength, k, power_iterations) of a group, validated."""
    strength = group.get("spectral_strength", defaults["spectral_strength"])
    k = group.get("k", defaults["k"])
    iterations = group.get("power_iterations", defaults["power_iterations"])
    check_hyperparameters(strength, k, iterations)
    return strength, k, iterations


def power_iteration_foreach(
    ws: list[Tensor], us: list[Tensor], vs: list[Tensor], iterations: int
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """:func:`power_iteration` on a list of matrices at once (foreach ops; two ``mv`` per matrix and iteration).

    Returns ``(us, vs, σ̂ (n,), ok (n,))``. A non-finite or zero norm in any iteration propagates to the last
    one, so checking the final norms is enough to decide which tensors keep their previous vectors.
    """
    us_new, vs_new = us, vs
    for _ in range(iterations):
        ts = [torch.mv(w.t(), u) for w, u in zip(ws, us_new)]
        nvs = torch._foreach_norm(ts)
        vs_new = torch._foreach_div(ts, nvs)  # a zero norm gives inf/NaN here, caught by ``ok`` below
        ss = [torch.mv(w, v) for w, v in zip(ws, vs_new)]
        sigmas = torch._foreach_norm(ss)
        us_new = torch._foreach_div(ss, sigmas)
    sigma, nv = torch.stack(sigmas), torch.stack(nvs)
    prod = sigma * nv  # zero, NaN or inf in either norm shows in the product
    ok = (prod > _TINY) & (prod < float("inf"))
    if ws[0].device.type == "cpu" and bool(ok.all()):  # the common case; on CPU the check costs no device sync
        return list(us_new), list(vs_new), sigma, ok
    oks = ok.unbind()
    us_out = [torch.where(o, a, b) for o, a, b in zip(oks, us_new, us)]
    vs_out = [torch.where(o, a, b) for o, a, b in zip(oks, vs_new, vs)]
    return us_out, vs_out, torch.where(ok, sigma, 0.0), ok


def _matrix_batch(ps: list[Tensor], state: dict, k: float, iterations: int, init_iterations: int):
    """Power-iterate every matrix in ``ps`` (fresh ones from the deterministic start with more iterations)."""
    ws = [as_matrix(p) for p in ps]
    warm = [i for i, p in enumerate(ps) if "spectral_u" in (state.get(p) or {})]
    warm_set = set(warm)
    fresh = [i for i in range(len(ps)) if i not in warm_set]
    us: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    vs: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    sig, okv = None, None
    for idx, n in ((warm, iterations), (fresh, max(iterations, init_iterations))):
        if not idx:
            continue
        if idx is warm:
            u0 = [state[ps[i]]["spectral_u"] for i in idx]
            v0 = [state[ps[i]]["spectral_v"] for i in idx]
        else:
            u0, v0 = map(list, zip(*(initial_vectors(*ws[i].shape, ws[i].device) for i in idx)))
        u1, v1, s1, ok1 = power_iteration_foreach([ws[i] for i in idx], u0, v0, n)
        if len(idx) == len(ps):
            us, vs, sig, okv = u1, v1, s1, ok1
        else:
            if sig is None:
                sig = torch.zeros(len(ps), device=ws[0].device)
                okv = torch.zeros(len(ps), dtype=torch.bool, device=ws[0].device)
            where = torch.tensor(idx, device=sig.device)
            sig, okv = sig.index_copy(0, where, s1), okv.index_copy(0, where, ok1)
            for j, i in enumerate(idx):
                us[i], vs[i] = u1[j], v1[j]
    coef = torch.nan_to_num(matrix_coefficient(sig, k), nan=0.0, posinf=0.0, neginf=0.0) * okv
    return us, vs, coef, sig


def _vector_batch(ps: list[Tensor], role: str, k: float) -> list[Tensor]:
    """∇R for a list of biases (‖b‖^{2k}) or scales (Σ(γ−1)²), float32, via foreach ops."""
    xs = ps if ps[0].dtype == torch.float32 else [p.float() for p in ps]
    if role == "scale":
        return list(torch._foreach_mul(torch._foreach_sub(xs, 1.0), 2.0))
    if k == 1:
        return list(torch._foreach_mul(xs, 2.0))
    norms = torch.stack(torch._foreach_norm(xs))
    coef = torch.nan_to_num(norms.pow(2 * k - 2).mul_(2.0 * k), nan=0.0, posinf=0.0, neginf=0.0)
    return list(torch._foreach_mul(xs, list(coef.unbind())))


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
        strength, k, iterations = group_settings(group, defaults)
        if strength == 0.0:
            continue
        by_role: dict[str, list[Tensor]] = {"matrix": [], "bias": [], "scale": [], "none": []}
        for p, concrete in zip(group["params"], group_roles(group, defaults.get("role", "auto"))):
            if concrete == "none" or p.numel() == 0:
                continue
            grad = p.grad
            if grad is None:
                if only_with_grad:
                    continue
            elif grad.is_sparse:
                raise RuntimeError(
                    "spectral regularization does not support sparse gradients; give this parameter role 'none' "
                    "(specopt.param_groups(model, roles={'<name>': 'none'})) or use dense gradients"
                )
            by_role[concrete].append(p)
        for concrete in ("matrix", "bias", "scale"):
            ps = by_role[concrete]
            if not ps:
                continue
            batches = [ps]  # foreach ops need one device and dtype per batch
            if any(p.device != ps[0].device or p.dtype != ps[0].dtype for p in ps):
                keyed: dict[tuple, list[Tensor]] = {}
                for p in ps:
                    keyed.setdefault((p.device, p.dtype), []).append(p)
                batches = list(keyed.values())
            for batch in batches:
                if concrete == "matrix":
                    us, vs, coef, sig = _matrix_batch(batch, state, k, iterations, init_iterations)
                    pending.matrices.append((batch, us, vs, coef, sig, strength, group))
                else:
                    pending.vectors.append((batch, _vector_batch(batch, concrete, k), strength, group))
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
    for ps, us, vs, coef, sig, strength, group in pending.matrices:
        scale = _step_scale(group["lr"], strength, found_inf)
        if coef.device.type == "cpu" and not isinstance(scale, Tensor):
            # CPU: read the coefficients once (no device to synchronise) and fold them into addr_'s alpha
            scaled_vs, alphas = vs, (coef * scale).tolist()
        else:
            scaled_vs, alphas = torch._foreach_mul(vs, list((coef * scale).unbind())), [1.0] * len(ps)
        for p, u, v, sv, alpha, s in zip(ps, us, vs, scaled_vs, alphas, sig.unbind()):
            if p.grad is None:
                continue
            st = state[p]
            st["spectral_u"], st["spectral_v"], st["spectral_sigma"] = u, v, s
            if p.dtype == torch.float32 and p.is_contiguous():  # under no_grad: in place on the leaf
                p.view(p.shape[0], -1).addr_(u, sv, alpha=alpha)
            else:
                p.add_(torch.outer(u, sv * alpha).reshape(p.shape).to(p.dtype))
    for ps, ds, strength, group in pending.vectors:
        keep = [i for i, p in enumerate(ps) if p.grad is not None]
        if len(keep) < len(ps):
            ps, ds = [ps[i] for i in keep], [ds[i] for i in keep]
        if not ps:
            continue
        scale = _step_scale(group["lr"], strength, found_inf)
        if ps[0].dtype == torch.float32:
            if isinstance(scale, Tensor):
                torch._foreach_add_(ps, torch._foreach_mul(ds, scale))
            else:
                torch._foreach_add_(ps, ds, alpha=scale)
        else:
            for p, d in zip(ps, ds):
                p.add_((d * scale).to(p.dtype))


def fill_group_defaults(group: dict, defaults: dict) -> None:
    """Give ``group`` the spectral keys it lacks (``spectral_strength``, ``k``, ``power_iterations``, and ``role``
    unless it has per-parameter ``roles``), and validate them."""
    keys = ("spectral_strength", "k", "power_iterations") + (() if "roles" in group else ("role",))
    for key in keys:
        group.setdefault(key, defaults[key])
    group_settings(group, defaults)
    group_roles(group)


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
