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
  :math:`d = c(\hat\sigma)\,u v^\top` with :math:`c(\sigma) = 2k\,\sigma^{k-1}(\sigma^k - 1)` (rank one, never
  materialised); role ``qkv`` does the same for each block (q, k, v) of a fused projection — three equal row
  blocks by default, or the ``(sizes, axis)`` of the group's ``blocks`` entry (:mod:`specopt.layouts`): equal row
  blocks are one batched iteration on a (b, m, n) view, other layouts (grouped-query attention's unequal rows,
  GPT-2's column blocks, iterated as the row blocks of Wᵀ) a foreach iteration over the blocks, with u and v
  stored as the concatenation of the blocks' vectors;
* bias :math:`b`: :math:`d = 2k\,\lVert b\rVert^{2k-2}\, b`, the gradient of :math:`\lVert b\rVert^{2k}`;
* scale :math:`\gamma`: :math:`d = 2(\gamma - 1)`, the gradient of :math:`\sum_i(\gamma_i - 1)^2`.

**The step never overshoots its target.** A gradient step on R moves σ1 by :math:`\eta\lambda c(\sigma)`, which
grows like :math:`\sigma^{2k-1}`: at lr 1e-3, λ = 1, k = 2 it exceeds σ − 1 once σ ≳ 22, lands beyond 1 at a larger
|σ| and diverges (σ = 25 reached 1e26 in four steps). So each tensor's step is the gradient step *truncated at the
target*:

.. math::
    \alpha &= \operatorname{clamp}\big(\eta\lambda\,c(\hat\sigma),\ \min(0, \hat\sigma - 1),\ \max(0, \hat\sigma - 1)\big),
        \qquad W \leftarrow W - \alpha\, u v^\top\\
    b &\leftarrow b - \min\big(1,\ \eta\lambda\,2k\lVert b\rVert^{2k-2}\big)\, b,\qquad
    \gamma \leftarrow \gamma - \min\big(1,\ 2\eta\lambda\big)\,(\gamma - 1)

Where the gradient step does not cross the target (every step of ordinary training) this *is* the gradient step,
so ``Spectral(SGD)`` stays exactly SGD on J + λR there; where it would cross, the tensor lands on the target. Why
the matrix bound holds for the true σ1, not just the estimate: with :math:`u = Wv/\hat\sigma`,
:math:`W - \alpha u v^\top = W(I - \tfrac{\alpha}{\hat\sigma} v v^\top)`. Shrinking (:math:`0 \le \alpha \le \hat\sigma - 1`),
the right factor has norm ≤ 1, so σ1 never grows, and :math:`\lVert W' v\rVert = \hat\sigma - \alpha \ge 1`; growing,
the inverse factor has norm ≤ 1, so σ1 never shrinks, and it reaches at most 1 once the power iteration has
converged (up to its error otherwise). A bias norm stays in [0, ‖b‖], a scale between γ and 1.

:math:`\hat\sigma = \lVert W v\rVert \le \sigma_1(W)` for any unit :math:`v`, so the estimate never exceeds the true
spectral norm. Vectors are float32 whatever the parameter's dtype and are stored as ``spectral_u``,
``spectral_v`` and ``spectral_sigma`` in the optimizer's per-parameter state (in the fused order of
:mod:`specopt.kernel`, ``fused_spectral=True``, also the mat-vecs ``spectral_wv`` = W v and ``spectral_wtu`` = Wᵀ u
taken after the step). The math itself is :mod:`specopt.kernel`'s; this module holds the optimizer state around it.

Non-finite values never poison the state: when an iteration produces a non-finite or zero norm (NaN/Inf weights, a
zero matrix) the previous vectors are kept and that tensor's spectral step is skipped for this step. Everything is
decided with tensor ops (``torch.where``), so the step makes no host-device synchronisation and compiles with
``torch.compile(fullgraph=True)``. In eager mode on CPU, where reading a tensor costs no synchronisation, the common
all-finite case is detected with one ``.all()`` and the per-matrix step sizes are read with one ``.tolist()``,
which saves a few dozen small dispatches per step. Parameters that are DTensors (FSDP2, tensor parallel) are handled
by :mod:`specopt.distributed` with all-reduces of vectors, never a gather of W.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.weak import WeakTensorKeyDictionary

from . import kernel as K
from . import layouts as L
from .kernel import (  # re-exported: the math lives in specopt.kernel
    initial_vectors, matrix_coefficient, matrix_step, power_iteration, power_iteration_foreach, vector_fraction,
)
from .roles import roles_and_layouts

SPECTRAL_KEYS = ("spectral_strength", "k", "power_iterations", "init_iterations", "spectral_pull",
                 "spectral_precondition")
PULLS = ("two-sided", "one-sided")
r"""The two shapes of the pull (``pull=``): ``two-sided`` is the paper's R, σ1 pulled toward 1 from either side;
``one-sided`` is :math:`R^+ = \sum_W \max(\sigma_1^k - 1, 0)^2 + \sum_b\lVert b\rVert^{2k} + \sum_\gamma\sum_i
\max(\gamma_i - 1, 0)^2`, which only pulls down what has grown above its target."""
SPECTRAL_STATE_KEYS = ("spectral_u", "spectral_v", "spectral_sigma", "spectral_residual", "spectral_wv", "spectral_wtu")
BLOCKS = {"matrix": 1, "qkv": 3}
"""Row blocks of each matrix-like role by default: ``qkv`` is three stacked projections, each its own matrix (a
group's ``blocks`` entry may state other sizes or column blocks)."""


@dataclass
class Pending:
    """What :func:`prepare` computed before the base step, for :func:`apply` after it."""

    matrices: list[tuple[list[Tensor], list[Tensor], list[Tensor], Tensor, float, float, dict, list[Tensor] | None]] = (
        field(default_factory=list)
    )  # plain local matrices, batched: (params, us, vs, σ̂ (n,), strength, k, group, next vs or None); in the fused
    # order (kernel.from_matvecs) vs are the previous vectors the step pairs with u, next vs those stored
    blocked: list[tuple[Tensor, Tensor, Tensor, Tensor, float, float, dict]] = field(default_factory=list)
    # one qkv or sharded matrix each: (param, u (b, m), v (b, n), σ̂ (b,), strength, k, group)
    fused: list[tuple[Tensor, tuple[int, ...], int, list[Tensor], list[Tensor], Tensor, float, float, dict]] = field(
        default_factory=list
    )  # one qkv tensor of another layout each: (param, sizes, axis, u_j's, v_j's, σ̂ (b,), strength, k, group)
    vectors: list[tuple[list[Tensor], list[Tensor], Tensor, str, float, dict]] = field(default_factory=list)
    # (params, x_t (b_t, or γ_t − 1), coefficients (n,) of d = c·x_t, role, strength, group)
    param_groups: list[dict] = field(default_factory=list)
    recheck_grads: bool = False
    """Whether :func:`apply` must drop tensors left without a gradient (a closure ran between the two halves).
    Without a closure every prepared tensor had one, and ``apply`` reads no ``.grad`` (under ``torch.compile`` a
    read of ``.grad`` is guarded on the gradient tensor itself, so a fresh gradient every step would recompile)."""


def check_hyperparameters(strength: Any, k: Any, power_iterations: Any, init_iterations: Any = 1) -> None:
    """One-line ``ValueError`` for an invalid strength, k or number of power iterations."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0.0 or strength == float("inf"):
        raise ValueError(f"spectral strength must be a finite number >= 0, got {strength!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 1 <= k < float("inf"):
        raise ValueError(f"k must be a number >= 1 (the paper uses 1, 2, 4 or 8), got {k!r}")
    for name, n in (("power_iterations", power_iterations), ("init_iterations", init_iterations)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")


def as_matrix(param: Tensor) -> Tensor:
    """``param`` viewed as out × in (conv kernels: out × in·kh·kw), float32."""
    w = param.reshape(param.shape[0], -1)  # callers hold no_grad: no autograd history, no detach needed
    return w if w.dtype == torch.float32 else w.float()


def as_blocks(param: Tensor, blocks: int) -> Tensor:
    """``param`` viewed as ``blocks`` stacked matrices, (blocks, out/blocks, in), float32."""
    w = param.reshape(blocks, param.shape[0] // blocks, -1)
    return w if w.dtype == torch.float32 else w.float()


def check_form(pull: Any, precondition: Any) -> None:
    """One-line ``ValueError`` for an unknown ``pull`` or a non-boolean ``precondition``."""
    if pull not in PULLS:
        raise ValueError(f"pull must be one of {', '.join(PULLS)}, got {pull!r}")
    if not isinstance(precondition, bool):
        raise ValueError(f"precondition must be True or False, got {precondition!r}")


def group_settings(group: dict, defaults: dict) -> tuple[float, float, int, int]:
    """(strength, k, power_iterations, init_iterations) of a group, validated (its pull and precondition too)."""
    strength, k, iterations, init, pull, precondition = (
        group.get(key, defaults.get(key, FORM_DEFAULTS.get(key))) for key in SPECTRAL_KEYS)
    check_hyperparameters(strength, k, iterations, init)
    check_form(pull, precondition)
    return strength, k, iterations, init


FORM_DEFAULTS = {"spectral_pull": "two-sided", "spectral_precondition": False}
"""The paper's form: a two-sided pull, the step ηλ∇R (no preconditioner). Groups and states saved before these
options existed read as this."""


def group_form(group: dict) -> tuple[bool, bool]:
    """(one_sided, precondition) of a group (:data:`FORM_DEFAULTS` where it has neither key)."""
    return (group.get("spectral_pull", FORM_DEFAULTS["spectral_pull"]) == "one-sided",
            bool(group.get("spectral_precondition", False)))


def _warm_or_initial(state: dict, p: Tensor, shape: tuple[int, int], blocks: int = 1):
    """(u, v, warm) from ``state`` (reshaped to (blocks, ·) when blocked), else the deterministic start."""
    st = state.get(p) or {}
    if "spectral_u" in st:
        return st["spectral_u"], st["spectral_v"], True
    (u,), (v,) = K.initial_blocks([tuple(shape)], p.device, blocks)
    return u, v, False


def _matrix_batch(ps: list[Tensor], state: dict, iterations: int, init_iterations: int):
    """(us, vs, σ̂ (n,)) of every plain matrix in ``ps`` (fresh ones from the deterministic start, more iterations)."""
    ws = [as_matrix(p) for p in ps]
    start = [_warm_or_initial(state, p, w.shape) for p, w in zip(ps, ws)]
    warm = [i for i, s in enumerate(start) if s[2]]
    fresh = [i for i, s in enumerate(start) if not s[2]]
    if not fresh or not warm:
        n = iterations if warm else max(iterations, init_iterations)
        return power_iteration_foreach(ws, [s[0] for s in start], [s[1] for s in start], n)[:3]
    us: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    vs: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    sig: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    for idx, n in ((warm, iterations), (fresh, max(iterations, init_iterations))):
        u1, v1, s1, _ = power_iteration_foreach([ws[i] for i in idx], [start[i][0] for i in idx],
                                                [start[i][1] for i in idx], n)
        for j, i in enumerate(idx):
            us[i], vs[i], sig[i] = u1[j], v1[j], s1[j]
    return us, vs, torch.stack(sig)


_WRITTEN: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
"""``p._version`` of each fused-order matrix right after the step took its mat-vecs (``spectral_wv``, ``spectral_wtu``).
A different version at the next step means W was changed in place outside the step (a reset, ``load_state_dict``
of the model, a hand edit): the stored mat-vecs are then stale and are dropped (:func:`forget_stale_matvecs`)."""


def forget_stale_matvecs(param_groups: list[dict], state: dict) -> None:
    """Drop the fused order's stored mat-vecs of every matrix changed in place since the step that took them, so its
    next step takes the plain order (warm-started from its stored u, v) and σ̂ is that of the current W. Host-side:
    called by :func:`prepare` in eager mode and by :func:`specopt.compile_step` around the compiled step."""
    for group in param_groups:
        for p in group["params"]:
            st = state.get(p)
            if st and "spectral_wv" in st and _WRITTEN.get(p) != p._version:
                del st["spectral_wv"], st["spectral_wtu"]


def record_matvecs(param_groups: list[dict], state: dict) -> None:
    """Remember ``p._version`` of every matrix whose state holds fresh mat-vecs (see :data:`_WRITTEN`)."""
    for group in param_groups:
        for p in group["params"]:
            st = state.get(p)
            if st and "spectral_wv" in st:
                _WRITTEN[p] = p._version


def _matrix_batch_fused(ps: list[Tensor], state: dict, iterations: int, init_iterations: int):
    """(us, vs, σ̂ (n,), next vs) of plain matrices in the fused order (:func:`specopt.kernel.from_matvecs`):
    matrices whose state holds the mat-vecs of the last step (``spectral_wv``, ``spectral_wtu``) read their estimate
    from them without touching W; the others (a first step, a state saved without them) iterate as
    :func:`_matrix_batch` does, and their next vectors are the ones found."""
    states = [state.get(p) or {} for p in ps]
    ready = [i for i, st in enumerate(states) if "spectral_wv" in st]
    rest = [i for i, st in enumerate(states) if "spectral_wv" not in st]
    us: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    vs: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    nexts: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    sig: list[Tensor] = [None] * len(ps)  # type: ignore[list-item]
    if ready:
        prev_u, prev_v = [states[i]["spectral_u"] for i in ready], [states[i]["spectral_v"] for i in ready]
        u1, n1, s1, _ = K.from_matvecs([states[i]["spectral_wv"] for i in ready],
                                       [states[i]["spectral_wtu"] for i in ready], prev_u, prev_v)
        for j, i in enumerate(ready):
            us[i], vs[i], nexts[i], sig[i] = u1[j], prev_v[j], n1[j], s1[j]
    if rest:
        u2, v2, s2 = _matrix_batch([ps[i] for i in rest], state, iterations, init_iterations)
        for j, i in enumerate(rest):
            us[i], vs[i], nexts[i], sig[i] = u2[j], v2[j], v2[j], s2[j]
    return us, vs, torch.stack(sig), nexts


def _blocked(p: Tensor, blocks: int, state: dict, iterations: int, init_iterations: int):
    """(u (b, m), v (b, n), σ̂ (b,)) of a ``blocks``-row-block matrix such as a fused qkv projection."""
    w = as_blocks(p, blocks)
    u, v, warm = _warm_or_initial(state, p, w.shape[1:], blocks)
    if warm:
        u, v = u.reshape(blocks, -1), v.reshape(blocks, -1)
    u, v, sigma, _ = power_iteration(w, u, v, iterations if warm else max(iterations, init_iterations))
    return u, v, sigma


def _fused(p: Tensor, layout: L.Layout, state: dict, iterations: int,
           init_iterations: int) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """(u_j's, v_j's, σ̂ (b,)) of the blocks ``p.split(sizes, axis)`` of a fused tensor (foreach power iteration).

    Column blocks are iterated as the row blocks of Wᵀ (u_j over W's columns, v_j over its rows), as the sharded
    path does, so a DTensor run and a local one start from the same vectors."""
    sizes, axis = layout
    w = p if p.dtype == torch.float32 else p.float()
    ws = list((w.t() if axis else w).split(sizes, dim=0))
    st = state.get(p) or {}
    if "spectral_u" in st:
        us = list(st["spectral_u"].split([b.shape[0] for b in ws]))
        vs = list(st["spectral_v"].split([b.shape[1] for b in ws]))
        n = iterations
    else:
        us, vs = K.initial_blocks([tuple(b.shape) for b in ws], p.device)
        n = max(iterations, init_iterations)
    us, vs, sigma, _ = power_iteration_foreach(ws, us, vs, n)
    return us, vs, sigma


def vector_terms(ps: list[Tensor], role: str, k: float, one_sided: bool = False) -> tuple[list[Tensor], Tensor]:
    r"""∇R = c·x for a list of biases or scales, as (x's, c (n,)), float32 copies of the pre-step values.

    Bias: :math:`x = b,\ c = 2k\lVert b\rVert^{2k-2}` (:math:`\nabla_b\lVert b\rVert^{2k}`); scale:
    :math:`x = \gamma - 1,\ c = 2` (:math:`\nabla_\gamma\sum_i(\gamma_i - 1)^2`); ``one_sided``:
    :math:`x = \max(\gamma - 1, 0)` (the gradient of :math:`\sum_i\max(\gamma_i - 1, 0)^2`; a bias's pull toward 0 is
    one-sided already). All tensors on one device, one dtype.
    """
    if role == "scale":
        xs = ps if ps[0].dtype == torch.float32 else [p.float() for p in ps]
        xs = list(torch._foreach_sub(xs, 1.0))
        if one_sided:
            xs = list(torch._foreach_clamp_min(xs, 0.0))
        return xs, torch.full((len(ps),), 2.0, device=ps[0].device)
    xs = [p.float() if p.dtype != torch.float32 else p.clone() for p in ps]  # copies: the base step changes p
    return xs, K.bias_coefficient(xs, k)


def _by_device_and_dtype(ps: list[Tensor]) -> list[list[Tensor]]:
    """Foreach ops need one device and dtype per batch."""
    keyed: dict[tuple, list[Tensor]] = {}
    for p in ps:
        keyed.setdefault((p.device, p.dtype), []).append(p)
    return list(keyed.values())


def _is_dtensor(p: Tensor) -> bool:
    return type(p).__name__ == "DTensor"


@torch.no_grad()
def prepare(param_groups: list[dict], state: dict, defaults: dict, only_with_grad: bool = True) -> Pending:
    """Compute ∇R at the current (pre-step) weights of every regularized tensor; see the module docstring.

    With ``defaults["fused_spectral"]`` the plain matrices of groups with ``power_iterations=1`` take the fused
    order (:mod:`specopt.kernel`): their estimate comes from the mat-vecs :func:`apply` took after the last step.
    ``only_with_grad`` skips tensors without a gradient (known before the step when there is no closure); with a
    closure every tensor is prepared and :func:`apply` drops those that end up without one.
    """
    pending = Pending(recheck_grads=not only_with_grad, param_groups=param_groups)
    fused_order = bool(defaults.get("fused_spectral", False))
    if fused_order and not torch.compiler.is_compiling():
        forget_stale_matvecs(param_groups, state)
    sharded: list[tuple[Tensor, str, float, float, int, int, dict, L.Layout | None]] = []
    for group in param_groups:
        strength, k, iterations, init_iterations = group_settings(group, defaults)
        if strength == 0.0:
            continue
        one_sided, precondition = group_form(group)
        if precondition and "betas" not in group:  # before the base step moves anything
            raise ValueError(NOT_ADAM)
        by_role: dict[str, list[Tensor]] = {"matrix": [], "qkv": [], "bias": [], "scale": []}
        fused: list[tuple[Tensor, L.Layout]] = []
        concrete, layouts = roles_and_layouts(group, defaults.get("role", "auto"))
        for p, role, layout in zip(group["params"], concrete, layouts):
            if role == "none" or p.numel() == 0:
                continue
            if p.is_complex():  # fill_group_defaults refuses it first; a role changed later is caught here
                raise complex_error(group, p, role)
            grad = p.grad
            if grad is None:
                if only_with_grad:
                    continue
            elif grad.is_sparse:
                raise RuntimeError(
                    "spectral regularization does not support sparse gradients; give this parameter role 'none' "
                    "(specopt.param_groups(model, roles={'<name>': 'none'})) or use dense gradients"
                )
            if precondition and _is_dtensor(p):
                raise ValueError(unsupported_precondition(group, p))
            if _is_dtensor(p):
                sharded.append((p, role, strength, k, iterations, init_iterations, group, layout))
            elif role == "qkv" and not L.is_default(layout):
                fused.append((p, layout))
            else:
                by_role[role].append(p)
        for batch in _by_device_and_dtype(by_role["matrix"]):
            if fused_order and iterations == 1:
                us, vs, sig, nexts = _matrix_batch_fused(batch, state, iterations, init_iterations)
                pending.matrices.append((batch, us, vs, sig, strength, k, group, nexts))
            else:
                us, vs, sig = _matrix_batch(batch, state, iterations, init_iterations)
                pending.matrices.append((batch, us, vs, sig, strength, k, group, None))
        for p in by_role["qkv"]:
            u, v, sig = _blocked(p, 3, state, iterations, init_iterations)
            pending.blocked.append((p, u, v, sig, strength, k, group))
        for p, (sizes, axis) in fused:
            us, vs, sig = _fused(p, (sizes, axis), state, iterations, init_iterations)
            pending.fused.append((p, sizes, axis, us, vs, sig, strength, k, group))
        for role in ("bias", "scale"):
            for batch in _by_device_and_dtype(by_role[role]):
                xs, coef = vector_terms(batch, role, k, one_sided)
                pending.vectors.append((batch, xs, coef, role, strength, group))
    if sharded:
        from .distributed import prepare_sharded

        prepare_sharded(sharded, state, pending)
    return pending


NOT_ADAM = ("precondition=True divides the spectral step by Adam's sqrt(v̂) + eps: it needs an Adam-family base "
            "optimizer (SpectralAdam, SpectralAdamW, Spectral(Adam or AdamW)), whose state has exp_avg_sq")


def unsupported_precondition(group: dict, p: Tensor) -> str:
    """The one-line refusal of ``precondition=True`` on a sharded tensor."""
    j = next(i for i, q in enumerate(group["params"]) if q is p)
    names = group.get("param_names")
    name = repr(names[j]) if names else f"parameter {j} of its group"
    return (f"precondition=True does not support DTensor shards (FSDP2, tensor parallel) yet: {name}; use "
            "precondition=False for it (its own param group)")


def adam_denominators(ps: list[Tensor], state: dict, group: dict) -> list[Tensor]:
    r"""Adam's :math:`\sqrt{\hat v_t} + \epsilon` of each of ``ps`` after the base step
    (:func:`specopt.kernel.adam_denominator`), from the state an Adam-family optimizer keeps (``exp_avg_sq``,
    ``step``) and the group's ``betas`` and ``eps``."""
    if "betas" not in group:
        raise ValueError(NOT_ADAM)
    out = []
    for p in ps:
        st = state.get(p) or {}
        if "exp_avg_sq" not in st:  # never stepped by the base (no gradient yet): D = ∞, ρ = 0, no step
            out.append(torch.full(p.shape, float("inf"), device=p.device))
            continue
        out.append(K.adam_denominator(st["exp_avg_sq"], st["step"], group["betas"][1], group["eps"]))
    return out


def _lr_strength(lr: Any, strength: float, found_inf: Tensor | None) -> Any:
    """ηλ, zero where ``found_inf`` (set by ``torch.amp.GradScaler`` on optimizers that unscale themselves)."""
    scale = lr * strength
    if found_inf is not None:
        scale = scale * (1.0 - found_inf.float())
    return scale


LOW_PRECISION = (torch.bfloat16, torch.float16)
"""Parameter dtypes whose spectral step is accumulated in a float32 residual (``spectral_residual``)."""


def add_compensated(p: Tensor, update: Tensor, st: dict) -> None:
    r"""``p += update`` for a bf16/fp16 ``p`` without rounding the step away: the part of the float32 update that
    ``p``'s dtype cannot hold is kept in ``st["spectral_residual"]`` (float32, ``p``'s shape) and added next time.

    .. math:: s = p + (r + \Delta),\qquad p \leftarrow \mathrm{round}(s),\qquad r \leftarrow s - p

    (compensated summation). A step of η·λ·c ≈ 1e-6 of a weight is far below bf16's resolution (2⁻⁸ relative):
    rounded directly it is lost, so σ1 of a bf16 layer would barely move; accumulated, it moves as in float32, up to
    one rounding of the weight (the residual is below half a unit in the last place of ``p``).
    """
    residual = st.get("spectral_residual")
    total = p.float() + (update if residual is None else residual + update)
    rounded = total.to(p.dtype)
    remainder = total - rounded.float()
    if residual is None:
        st["spectral_residual"] = remainder
    else:
        residual.copy_(remainder)
    p.copy_(rounded)


def _add(p: Tensor, update: Tensor, st: dict) -> None:
    """``p += update`` (float32), compensated for bf16/fp16 parameters (:func:`add_compensated`)."""
    if p.dtype in LOW_PRECISION:
        add_compensated(p, update, st)
    else:
        p.add_(update.to(p.dtype))


def _store_vectors(st: dict, u: Tensor, v: Tensor, sigma: Tensor, stored: list[Tensor], fresh: list[Tensor]) -> None:
    """Keep a matrix's power-iteration state (u, v, σ̂) in its optimizer state ``st``: the first time as new tensors,
    afterwards in place — ``stored`` and ``fresh`` collect the pairs for one ``_foreach_copy_`` — so the state keeps
    its tensors and a compiled step never recompiles."""
    if "spectral_u" in st:
        stored += (st["spectral_u"], st["spectral_v"], st["spectral_sigma"])
        fresh += (u, v, sigma)
    else:
        st["spectral_u"], st["spectral_v"], st["spectral_sigma"] = u, v, sigma.clone()


def _keep_on_skip(old: list[Tensor], new: list[Tensor], found_inf: Tensor | None) -> list[Tensor]:
    """``new``, or ``old`` where ``found_inf`` (a step GradScaler skips leaves the power-iteration state alone)."""
    if found_inf is None:
        return new
    skip = found_inf.reshape(()).bool()
    return [torch.where(skip, o, n) for o, n in zip(old, new)]


@torch.no_grad()
def apply(pending: Pending, state: dict, found_inf: Tensor | None = None) -> None:
    """The truncated step θ ← θ − α·(direction) for every prepared tensor that has a gradient; store the
    power-iteration state. ``found_inf`` (GradScaler's, for optimizers that unscale themselves) zeroes the step and
    keeps the stored vectors and σ̂ as they were (a tensor's first step still stores its first estimate, taken at the
    unchanged weights). bf16/fp16 parameters accumulate the step in float32 (:func:`add_compensated`)."""
    def has_grad(p: Tensor) -> bool:
        return p.grad is not None if pending.recheck_grads else True

    for ps, us, vs, sig, strength, k, group, nexts in pending.matrices:
        one_sided, precondition = group_form(group)
        lr_strength = _lr_strength(group["lr"], strength, found_inf)
        if precondition:  # ηλρ per matrix: Adam's step on the penalty, projected on u vᵀ
            ds = adam_denominators(ps, state, group)
            lr_strength = lr_strength * torch.stack([K.adam_weight(u, v, d.reshape(d.shape[0], -1))
                                                     for u, v, d in zip(us, vs, ds)])
        alpha = matrix_step(sig, k, lr_strength, one_sided)
        if K.eager_cpu(alpha):  # read the step sizes once and fold them into addr_'s alpha
            scaled_vs, alphas = vs, [-a for a in alpha.tolist()]
        else:
            scaled_vs, alphas = torch._foreach_mul(vs, list((-alpha).unbind())), [1.0] * len(ps)
        stored: list[Tensor] = []
        fresh: list[Tensor] = []
        done: list[int] = []
        for i, (p, u, v, sv, a, s) in enumerate(zip(ps, us, nexts or vs, scaled_vs, alphas, sig.unbind())):
            if not has_grad(p):
                continue
            done.append(i)
            st = state[p]
            _store_vectors(st, u, v, s, stored, fresh)
            if p.dtype == torch.float32 and p.is_contiguous():  # under no_grad: in place on the leaf
                p.view(p.shape[0], -1).addr_(u, sv, alpha=a)
            else:
                _add(p, torch.outer(u, sv * a).reshape(p.shape), st)
        if nexts is not None and done:  # the fused order: both mat-vecs of the weights just written, for next step
            wvs, wtus = K.matvecs([as_matrix(ps[i]) for i in done], [us[i] for i in done], [nexts[i] for i in done])
            for i, wv, wtu in zip(done, wvs, wtus):
                st = state[ps[i]]
                if "spectral_wv" in st:
                    stored += (st["spectral_wv"], st["spectral_wtu"])
                    fresh += (wv, wtu)
                else:
                    st["spectral_wv"], st["spectral_wtu"] = wv, wtu
        if stored:
            torch._foreach_copy_(stored, _keep_on_skip(stored, fresh, found_inf))
    if any(entry[-1] is not None for entry in pending.matrices) and not torch.compiler.is_compiling():
        record_matvecs(pending.param_groups, state)
    for p, u, v, sig, strength, k, group in pending.blocked:
        if not has_grad(p):
            continue
        one_sided, precondition = group_form(group)
        lr_strength = _lr_strength(group["lr"], strength, found_inf)
        if precondition:
            (d,) = adam_denominators([p], state, group)
            lr_strength = lr_strength * K.adam_weight(u, v, d.reshape(u.shape[0], u.shape[1], -1))
        alpha = matrix_step(sig, k, lr_strength, one_sided)
        if _is_dtensor(p):
            from .distributed import apply_sharded

            apply_sharded(p, u, v, sig, alpha, state)
            continue
        st = state[p]
        if "spectral_u" in st:
            stored = [st["spectral_u"], st["spectral_v"], st["spectral_sigma"]]
            torch._foreach_copy_(stored, _keep_on_skip(stored, [u.reshape(-1), v, sig], found_inf))
        else:
            st.update(spectral_u=u.reshape(-1).clone(), spectral_v=v.clone(), spectral_sigma=sig.clone())
        _add(p, K.rank_one(u, v, alpha).reshape(p.shape), st)  # (b, m, n): W_j ← W_j − α_j u_j v_jᵀ
    for p, sizes, axis, us, vs, sig, strength, k, group in pending.fused:  # W_j ← W_j − α_j u_j v_jᵀ, block by block
        if not has_grad(p):
            continue
        one_sided, precondition = group_form(group)
        lr_strength = _lr_strength(group["lr"], strength, found_inf)
        if precondition:  # each block's ρ from its slice of D (column blocks: the row blocks of Dᵀ)
            (d,) = adam_denominators([p], state, group)
            d_blocks = (d.t() if axis else d).split(sizes)
            lr_strength = lr_strength * torch.stack([K.adam_weight(u, v, db) for u, v, db in zip(us, vs, d_blocks)])
        alpha = matrix_step(sig, k, lr_strength, one_sided)
        st = state[p]
        u_all, v_all = torch.cat(us), torch.cat(vs)
        if "spectral_u" in st:
            stored = [st["spectral_u"], st["spectral_v"], st["spectral_sigma"]]
            torch._foreach_copy_(stored, _keep_on_skip(stored, [u_all, v_all, sig], found_inf))
        else:
            st.update(spectral_u=u_all, spectral_v=v_all, spectral_sigma=sig.clone())
        # the blocks are row blocks of W (axis 0) or of Wᵀ (axis 1): stacked, they are that matrix's update
        update = torch.cat([torch.outer(u * a, v) for u, v, a in zip(us, vs, (-alpha).unbind())])
        _add(p, update.t() if axis else update, st)
    for ps, xs, coef, role, strength, group in pending.vectors:  # p ← p − f·x_t: toward the target, never past
        keep = [i for i, p in enumerate(ps) if has_grad(p)]
        if not keep:
            continue
        lr_strength = _lr_strength(group["lr"], strength, found_inf)
        if group_form(group)[1]:  # preconditioned: f = min(1, ηλc/D) element by element
            ds = adam_denominators([ps[i] for i in keep], state, group)
            for i, d in zip(keep, ds):
                fraction = vector_fraction(coef[i] / d, lr_strength)
                _add(ps[i], -(fraction * xs[i]), state.setdefault(ps[i], {}))
            continue
        fraction = vector_fraction(coef, lr_strength)
        steps = [-f for f in fraction.tolist()] if K.eager_cpu(fraction) else list((-fraction).unbind())
        targets = [ps[i].to_local() if _is_dtensor(ps[i]) else ps[i] for i in keep]
        updates = torch._foreach_mul([xs[i] for i in keep], [steps[i] for i in keep])
        if targets[0].dtype in LOW_PRECISION and not _is_dtensor(ps[keep[0]]):
            for i, t, d in zip(keep, targets, updates):
                add_compensated(t, d, state.setdefault(ps[i], {}))
            continue
        if targets[0].dtype != torch.float32:  # float64; and sharded bf16/fp16 vectors, rounded (no residual)
            updates = [d.to(t.dtype) for d, t in zip(updates, targets)]
        torch._foreach_add_(targets, updates)


@torch.no_grad()
def one_pass(pending: Pending, groups: list[tuple[dict, tuple[list[Tensor], ...], bool]], state: dict) -> None:
    r"""``SpectralAdam(one_pass=True)``, inside a compiled step (:func:`specopt.compile_step`): Adam's update and
    the spectral step of each float32 tensor as one out-of-place expression, so that the step reads and writes W
    once:

    .. math::
        m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
        W \leftarrow W - \frac{\eta}{1-\beta_1^t}\,\frac{m}{\sqrt{v/(1-\beta_2^t)} + \epsilon}
            - \alpha\,u v^\top

    (a bias: :math:`- f\,b_t`; a scale: :math:`- f(\gamma_t - 1)`; AdamW first scales W by :math:`1 - \eta w`,
    Adam adds :math:`w W` to g). The same numbers as Adam's step then :func:`apply` (u, v, σ̂ and α of the plain
    order, from :func:`prepare`), up to float32 rounding; ``u vᵀ`` is indexed from a flat ``arange``
    (``u[i // n]·v[i % n]``) so that Inductor keeps one loop over W (benchmarks/one_pass_prototype.py,
    docs/benchmarks.md).

    ``groups``: ``(group, Adam's lists from _init_group, has_complex)``. Every float32 tensor of a group whose Adam
    this can write (plain Adam or AdamW: no amsgrad, differentiable or fused variant) leaves the lists;
    its plain matrix, bias or scale step (not the fused order's, not the preconditioned form's) leaves ``pending``.
    The rest — other groups, bf16/fp16 tensors, qkv blocks, DTensor shards, the fused order, the preconditioned
    form — keeps the two halves (Adam, then :func:`apply`, which reads the state this writes).
    """
    if pending.recheck_grads:  # gradients may change between the halves (not SpectralAdam's step): two halves
        return

    def is_eligible(group: dict) -> bool:  # (torch.optim turns capturable on while compiling: the steps are tensors)
        return not (group["amsgrad"] or group["differentiable"] or group["fused"])

    corrections: dict[Tensor, tuple] = {}  # p → ("matrix", u, v, α, σ̂) or ("vector", x, f); tensor keys, as state
    kept_matrices = []
    for entry in pending.matrices:
        ps, us, vs, sig, strength, k, group, nexts = entry
        one_sided, precondition = group_form(group)
        if (not is_eligible(group) or nexts is not None or precondition or ps[0].dtype != torch.float32
                or not all(p.is_contiguous() for p in ps)):
            kept_matrices.append(entry)
            continue
        alpha = matrix_step(sig, k, _lr_strength(group["lr"], strength, None), one_sided)
        for i, p in enumerate(ps):
            corrections[p] = ("matrix", us[i], vs[i], alpha[i], sig[i])
    kept_vectors = []
    for entry in pending.vectors:
        ps, xs, coef, role, strength, group = entry
        if (not is_eligible(group) or group_form(group)[1] or ps[0].dtype != torch.float32
                or any(_is_dtensor(p) for p in ps)):
            kept_vectors.append(entry)
            continue
        fraction = vector_fraction(coef, _lr_strength(group["lr"], strength, None))
        for i, p in enumerate(ps):
            corrections[p] = ("vector", xs[i], fraction[i])
    stored: list[Tensor] = []
    fresh: list[Tensor] = []
    for group, (params, grads, exp_avgs, exp_avg_sqs, _, steps), has_complex in groups:
        if has_complex or not is_eligible(group):
            continue
        beta1, beta2 = group["betas"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        keep = []
        for j, (p, g, m, v, t) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, steps)):
            if p.dtype != torch.float32 or _is_dtensor(p):
                keep.append(j)
                continue
            t += 1
            if group["maximize"]:
                g = -g
            if wd != 0 and not group["decoupled_weight_decay"]:
                g = g + wd * p
            m_new = torch.lerp(m, g, 1 - beta1)
            v_new = v * beta2 + g * g * (1 - beta2)
            base = p * (1 - lr * wd) if wd != 0 and group["decoupled_weight_decay"] else p
            new = base - (lr / (1 - beta1 ** t)) * m_new / (v_new.sqrt() / (1 - beta2 ** t).sqrt() + eps)
            corr = corrections.get(p)
            if corr is not None and corr[0] == "matrix":
                _, u, vv, alpha, sigma = corr
                i = torch.arange(p.numel(), device=p.device)
                new = new - ((alpha * u)[i // vv.shape[0]] * vv[i % vv.shape[0]]).view(p.shape)
                _store_vectors(state[p], u, vv, sigma, stored, fresh)
            elif corr is not None:
                new = new - corr[2] * corr[1]
            p.copy_(new)
            m.copy_(m_new)
            v.copy_(v_new)
        for lst in (params, grads, exp_avgs, exp_avg_sqs, steps):
            lst[:] = [lst[j] for j in keep]
    if stored:
        torch._foreach_copy_(stored, fresh)
    pending.matrices, pending.vectors = kept_matrices, kept_vectors


def native_pass(pending: Pending, groups: list[tuple[dict, tuple[list[Tensor], ...], bool]], state: dict) -> None:
    r"""``SpectralAdam(one_pass=True)``'s eager step on a CPU (:mod:`specopt.native`): Adam's update and the spectral
    step of every float32 CPU tensor of a plain Adam/AdamW group in one C++ loop per tensor — the step of
    :func:`one_pass`, with u, v, σ̂ and α from :func:`prepare` — and, in the fused order, the next step's mat-vecs
    (``spectral_wv`` = W v_t, ``spectral_wtu`` = Wᵀ u_t) accumulated while W is written instead of read again.
    What it takes leaves Adam's lists and ``pending``; the rest (other tensors, qkv blocks, DTensors, the
    preconditioned form, bf16) keeps the two halves, as does everything where the loop cannot be built."""
    from . import native

    if pending.recheck_grads or native.extension() is None:
        return

    def is_eligible(group: dict) -> bool:
        return not (group["amsgrad"] or group["differentiable"] or group["fused"] or group["capturable"])

    def ready(p: Tensor) -> bool:  # the loop can read and write it, its gradient and its moments
        st = state.get(p) or {}
        return not _is_dtensor(p) and native.usable(p, p.grad, st.get("exp_avg"), st.get("exp_avg_sq"))

    matrices: dict[Tensor, tuple] = {}  # p → (u, v, α, σ̂, next v or None); tensor keys, as state
    kept_matrices = []
    for entry in pending.matrices:
        ps, us, vs, sig, strength, k, group, nexts = entry
        one_sided, precondition = group_form(group)
        if not is_eligible(group) or precondition or not all(ready(p) for p in ps):
            kept_matrices.append(entry)
            continue
        alpha = matrix_step(sig, k, _lr_strength(group["lr"], strength, None), one_sided).tolist()
        for i, p in enumerate(ps):
            matrices[p] = (us[i], vs[i], alpha[i], sig[i], None if nexts is None else nexts[i])
    vectors: dict[Tensor, tuple[Tensor, float]] = {}
    kept_vectors = []
    for entry in pending.vectors:
        ps, xs, coef, role, strength, group = entry
        if not is_eligible(group) or group_form(group)[1] or not all(ready(p) for p in ps):
            kept_vectors.append(entry)
            continue
        fraction = vector_fraction(coef, _lr_strength(group["lr"], strength, None)).tolist()
        for i, p in enumerate(ps):
            vectors[p] = (xs[i].contiguous(), fraction[i])
    stored: list[Tensor] = []
    fresh: list[Tensor] = []
    recorded: list[Tensor] = []
    for group, (params, grads, exp_avgs, exp_avg_sqs, _, steps), has_complex in groups:
        if has_complex or not is_eligible(group):
            continue
        take = [j for j, p in enumerate(params) if p in matrices or p in vectors]
        if not take:
            continue
        ps, kinds, us, vs, alphas, nexts, wvs, wtus, xs, fractions = [], [], [], [], [], [], [], [], [], []
        for j in take:
            p = params[j]
            ps.append(p)
            if p in matrices:
                u, v, alpha, sigma, nxt = matrices[p]
                st = state[p]
                kinds.append(1)
                us.append(u.contiguous())
                vs.append(v.contiguous())
                alphas.append(alpha)
                _store_vectors(st, u, v if nxt is None else nxt, sigma, stored, fresh)
                if nxt is None:
                    nexts.append(u.new_empty(0))
                    wvs.append(u.new_empty(0))
                    wtus.append(u.new_empty(0))
                else:
                    nexts.append(nxt.contiguous())
                    if "spectral_wv" not in st:
                        st["spectral_wv"], st["spectral_wtu"] = u.new_empty(u.shape), v.new_empty(v.shape)
                    wvs.append(st["spectral_wv"])
                    wtus.append(st["spectral_wtu"])
                    recorded.append(p)
            else:
                x, f = vectors[p]
                kinds.append(2)
                xs.append(x)
                fractions.append(f)
        chosen = [steps[j] for j in take]
        torch._foreach_add_(chosen, 1)
        native.extension().step(
            ps, [params[j].grad for j in take], [exp_avgs[j] for j in take], [exp_avg_sqs[j] for j in take],
            [float(t) for t in chosen], kinds, us, vs, alphas, nexts, wvs, wtus, xs, fractions,
            float(group["betas"][0]), float(group["betas"][1]), float(group["lr"]), float(group["eps"]),
            float(group["weight_decay"]), bool(group["decoupled_weight_decay"]), bool(group["maximize"]))
        kept = set(take)
        for lst in (params, grads, exp_avgs, exp_avg_sqs, steps):
            lst[:] = [x for j, x in enumerate(lst) if j not in kept]
    if stored:
        torch._foreach_copy_(stored, fresh)
    if recorded:
        for p in recorded:
            _WRITTEN[p] = p._version
    pending.matrices, pending.vectors = kept_matrices, kept_vectors


def fill_group_defaults(group: dict, defaults: dict) -> None:
    """Give ``group`` the spectral keys it lacks (:data:`SPECTRAL_KEYS`, and ``role`` unless it has per-parameter
    ``roles``), and validate them (a complex tensor with a role other than ``none``: :func:`complex_error`)."""
    for key in SPECTRAL_KEYS + (() if "roles" in group else ("role",)):
        group.setdefault(key, defaults[key])
    group_settings(group, defaults)
    check_real(group, roles_and_layouts(group)[0])


def complex_error(group: dict, p: Tensor, role: str) -> ValueError:
    """The one-line refusal of a complex tensor ``p`` of ``group`` that has role ``role`` (not ``none``).

    The spectral step is written for real tensors: applied to a complex one it would regularize Re W alone (its
    σ1, not that of W) and report that σ1. The tensor is named by the group's ``param_names`` when it has them."""
    j = next(i for i, q in enumerate(group["params"]) if q is p)
    names = group.get("param_names")
    name = repr(names[j]) if names else f"parameter {j} of its group"
    override = repr(names[j]) if names else "'<name>'"
    return ValueError(
        f"specopt does not regularize complex tensors: {name} is {str(p.dtype).removeprefix('torch.')} with role "
        f"{role!r}; give it role 'none' (specopt.param_groups(model, roles={{{override}: 'none'}}))"
    )


def check_real(group: dict, roles: list[str]) -> None:
    """Raise :func:`complex_error` for the first complex tensor of ``group`` whose role in ``roles`` is not ``none``."""
    for p, role in zip(group["params"], roles):
        if role != "none" and p.is_complex():
            raise complex_error(group, p, role)


def carry_group_settings(saved_groups: list[dict], groups: list[dict]) -> list[dict]:
    """The ``param_groups`` of a ``state_dict`` about to be loaded, completed from the optimizer's current ``groups``.

    ``Optimizer.load_state_dict`` replaces every group's keys with the saved group's. A state saved by another
    optimizer (``torch.optim.Adam``, a plain SGD: the usual way of switching a checkpointed run to specopt) has no
    ``role``/``roles`` and none of :data:`SPECTRAL_KEYS`, so loading it would turn every group back into ``auto``
    (biases and scales into ``none``) at the default strength. Each saved group (a copy) therefore takes the current
    group's ``role``/``roles`` when it has neither, its ``param_names`` when it has none, and each spectral setting
    it lacks; what a saved group has wins, so a specopt state loads exactly as saved."""
    completed = []
    for saved, group in zip(saved_groups, groups):
        saved = dict(saved)
        roles = () if "role" in saved or "roles" in saved else ("role", "roles", "blocks")  # blocks go with roles
        keys = SPECTRAL_KEYS + ("param_names",) + roles
        for key in keys:
            if key in group and key not in saved:
                saved[key] = group[key]
        completed.append(saved)
    return completed


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
