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
``spectral_v`` and ``spectral_sigma`` in the optimizer's per-parameter state.

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

from . import layouts as L
from .roles import roles_and_layouts

_TINY = 1e-30
SPECTRAL_KEYS = ("spectral_strength", "k", "power_iterations", "init_iterations")
SPECTRAL_STATE_KEYS = ("spectral_u", "spectral_v", "spectral_sigma", "spectral_residual")
BLOCKS = {"matrix": 1, "qkv": 3}
"""Row blocks of each matrix-like role by default: ``qkv`` is three stacked projections, each its own matrix (a
group's ``blocks`` entry may state other sizes or column blocks)."""


@dataclass
class Pending:
    """What :func:`prepare` computed before the base step, for :func:`apply` after it."""

    matrices: list[tuple[list[Tensor], list[Tensor], list[Tensor], Tensor, float, float, dict]] = field(
        default_factory=list
    )  # plain local matrices, batched: (params, us, vs, σ̂ (n,), strength, k, group)
    blocked: list[tuple[Tensor, Tensor, Tensor, Tensor, float, float, dict]] = field(default_factory=list)
    # one qkv or sharded matrix each: (param, u (b, m), v (b, n), σ̂ (b,), strength, k, group)
    fused: list[tuple[Tensor, tuple[int, ...], int, list[Tensor], list[Tensor], Tensor, float, float, dict]] = field(
        default_factory=list
    )  # one qkv tensor of another layout each: (param, sizes, axis, u_j's, v_j's, σ̂ (b,), strength, k, group)
    vectors: list[tuple[list[Tensor], list[Tensor], Tensor, str, float, dict]] = field(default_factory=list)
    # (params, x_t (b_t, or γ_t − 1), coefficients (n,) of d = c·x_t, role, strength, group)
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


def _hash_uniform(n: int, salt: int) -> Tensor:
    """n deterministic values in [-0.5, 0.5): an integer hash of 0..n−1 (on the CPU, in int64; no generator)."""
    h = torch.arange(n, dtype=torch.int64) + salt
    for _ in range(3):  # h < 2³²+n and the multiplier < 2²⁷: every product fits in int64
        h = ((h ^ (h >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return (h ^ (h >> 16)).to(torch.float32) / 2.0**32 - 0.5


def initial_vectors(rows: int, cols: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Deterministic unit starting vectors of a rows × cols matrix.

    They depend on the shape only — not on the global RNG (seeding stays the user's), not on the device — and are
    made with tensor ops, so a compiled step can create them.
    """
    u, v = _hash_uniform(rows, 0), _hash_uniform(cols, 0x9E3779B9)  # on the CPU: GPU kernels index in int32
    return (u / u.norm().clamp_min(_TINY)).to(device), (v / v.norm().clamp_min(_TINY)).to(device)


def _normalize(x: Tensor, previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x/‖x‖, ‖x‖, ok) over the last dim; where a norm is zero or non-finite, ``previous`` is kept."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    ok = torch.isfinite(norm) & (norm > _TINY)
    return torch.where(ok, x / norm.clamp_min(_TINY), previous), norm.squeeze(-1), ok.squeeze(-1)


def power_iteration(w: Tensor, u: Tensor, v: Tensor, iterations: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""``iterations`` warm-started power iterations on ``w`` (float32), batched over leading dimensions.

    Shapes: ``w`` (..., m, n), ``u`` (..., m), ``v`` (..., n) — a plain matrix, or a stack of matrices such as the
    q/k/v blocks of a fused projection or one layer of several seeds. Returns ``(u, v, σ̂, ok)``: unit vectors with
    :math:`W v = \hat\sigma u`, the estimate :math:`\hat\sigma = \lVert W v\rVert \le \sigma_1(W)` (shape ``...``),
    and whether every iteration was finite and non-zero (where not, the previous vectors are returned unchanged and
    ``σ̂`` is 0).
    """
    ok_all = torch.ones(w.shape[:-2], dtype=torch.bool, device=w.device)
    sigma = torch.zeros(w.shape[:-2], dtype=torch.float32, device=w.device)
    for _ in range(iterations):
        v_new, _, ok_v = _normalize((u.unsqueeze(-2) @ w).squeeze(-2), v)
        u_new, sigma, ok_u = _normalize((w @ v_new.unsqueeze(-1)).squeeze(-1), u)
        ok = (ok_v & ok_u).unsqueeze(-1)
        u, v = torch.where(ok, u_new, u), torch.where(ok, v_new, v)
        ok_all = ok_all & ok.squeeze(-1)
    return u, v, torch.where(ok_all, sigma, torch.zeros_like(sigma)), ok_all


def power_iteration_foreach(
    ws: list[Tensor], us: list[Tensor], vs: list[Tensor], iterations: int
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """:func:`power_iteration` on a list of matrices of any shapes at once (foreach ops; two ``mv`` per matrix and
    iteration). Returns ``(us, vs, σ̂ (n,), ok (n,))``.

    A non-finite or zero norm in any iteration propagates to the last one, so checking the final norms is enough to
    decide which tensors keep their previous vectors.
    """
    us_new, vs_new = us, vs
    for _ in range(iterations):
        ts = [torch.mv(w.t(), u) for w, u in zip(ws, us_new)]
        nvs = _norms(ts)
        vs_new = torch._foreach_div(ts, nvs)  # a zero norm gives inf/NaN here, caught by ``ok`` below
        ss = [torch.mv(w, v) for w, v in zip(ws, vs_new)]
        sigmas = _norms(ss)
        us_new = torch._foreach_div(ss, sigmas)
    sigma, nv = torch.stack(sigmas), torch.stack(nvs)
    prod = sigma * nv  # zero, NaN or inf in either norm shows in the product
    ok = (prod > _TINY) & (prod < float("inf"))
    if _eager_cpu(ws[0]) and bool(ok.all()):  # the common case; on CPU the check costs no device sync
        return list(us_new), list(vs_new), sigma, ok
    oks = ok.unbind()
    us_out = [torch.where(o, a, b) for o, a, b in zip(oks, us_new, us)]
    vs_out = [torch.where(o, a, b) for o, a, b in zip(oks, vs_new, vs)]
    return us_out, vs_out, torch.where(ok, sigma, 0.0), ok


def _norms(xs: list[Tensor]) -> list[Tensor]:
    """Euclidean norms of a list of tensors: one ``_foreach_norm`` eagerly; under ``torch.compile`` plain sums of
    squares, which Inductor fuses into its own loops (an extern ``_foreach_norm`` call per list costs more than the
    arithmetic on these small vectors)."""
    if torch.compiler.is_compiling():
        return [x.square().sum().sqrt() for x in xs]
    return list(torch._foreach_norm(xs))


def _eager_cpu(t: Tensor) -> bool:
    """Whether reading ``t`` on the host is free: a CPU tensor outside a compiled region."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def matrix_coefficient(sigma: Tensor, k: float) -> Tensor:
    r""":math:`c(\sigma) = \partial R/\partial\sigma = 2k\,\sigma^{k-1}(\sigma^k - 1)` for :math:`R = (\sigma^k - 1)^2`."""
    if k == 1:
        return 2.0 * (sigma - 1.0)
    pk1 = sigma.pow(k - 1)
    return (2.0 * k) * pk1 * (pk1 * sigma - 1.0)


def matrix_step(sigma: Tensor, k: float, lr_strength: Any) -> Tensor:
    r"""How far σ1 moves toward 1: :math:`\alpha = \operatorname{clamp}(\eta\lambda c(\hat\sigma))` between 0 and
    :math:`\hat\sigma - 1` (so :math:`W \leftarrow W - \alpha u v^\top` never crosses 1). ``lr_strength`` is ηλ, a
    number or a tensor; σ̂ = 0 (a failed power iteration) gives 0."""
    gradient_step = torch.nan_to_num(lr_strength * matrix_coefficient(sigma, k), nan=0.0)  # ±inf: clamped next
    gap = sigma - 1.0
    alpha = torch.minimum(torch.maximum(gradient_step, gap.clamp(max=0.0)), gap.clamp(min=0.0))
    return torch.where(sigma > 0, alpha, torch.zeros_like(alpha))


def vector_fraction(coefficient: Tensor, lr_strength: Any) -> Tensor:
    r"""The fraction of the way to the target a bias (toward 0) or scale (toward 1) moves:
    :math:`\min(1, \eta\lambda c)` with :math:`d = c\,x` (:math:`c = 2k\lVert b\rVert^{2k-2}`, or 2 for a scale)."""
    return torch.nan_to_num(lr_strength * coefficient, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def group_settings(group: dict, defaults: dict) -> tuple[float, float, int, int]:
    """(strength, k, power_iterations, init_iterations) of a group, validated."""
    strength, k, iterations, init = (group.get(key, defaults[key]) for key in SPECTRAL_KEYS)
    check_hyperparameters(strength, k, iterations, init)
    return strength, k, iterations, init


def _warm_or_initial(state: dict, p: Tensor, shape: tuple[int, int], blocks: int = 1):
    """(u, v, warm) from ``state`` (reshaped to (blocks, ·) when blocked), else the deterministic start."""
    st = state.get(p) or {}
    if "spectral_u" in st:
        return st["spectral_u"], st["spectral_v"], True
    u, v = initial_vectors(shape[0], shape[1], p.device)
    if blocks > 1:
        u, v = u.expand(blocks, -1), v.expand(blocks, -1)
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
        starts = [initial_vectors(b.shape[0], b.shape[1], p.device) for b in ws]
        us, vs, n = [s[0] for s in starts], [s[1] for s in starts], max(iterations, init_iterations)
    us, vs, sigma, _ = power_iteration_foreach(ws, us, vs, n)
    return us, vs, sigma


def vector_terms(ps: list[Tensor], role: str, k: float) -> tuple[list[Tensor], Tensor]:
    r"""∇R = c·x for a list of biases or scales, as (x's, c (n,)), float32 copies of the pre-step values.

    Bias: :math:`x = b,\ c = 2k\lVert b\rVert^{2k-2}` (:math:`\nabla_b\lVert b\rVert^{2k}`); scale:
    :math:`x = \gamma - 1,\ c = 2` (:math:`\nabla_\gamma\sum_i(\gamma_i - 1)^2`). All tensors on one device, one dtype.
    """
    if role == "scale":
        xs = ps if ps[0].dtype == torch.float32 else [p.float() for p in ps]
        return list(torch._foreach_sub(xs, 1.0)), torch.full((len(ps),), 2.0, device=ps[0].device)
    xs = [p.float() if p.dtype != torch.float32 else p.clone() for p in ps]  # copies: the base step changes p
    if k == 1:
        return xs, torch.full((len(ps),), 2.0, device=ps[0].device)
    return xs, torch.stack(_norms(xs)).pow(2 * k - 2).mul_(2.0 * k)


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

    ``only_with_grad`` skips tensors without a gradient (known before the step when there is no closure); with a
    closure every tensor is prepared and :func:`apply` drops those that end up without one.
    """
    pending = Pending(recheck_grads=not only_with_grad)
    sharded: list[tuple[Tensor, str, float, float, int, int, dict, L.Layout | None]] = []
    for group in param_groups:
        strength, k, iterations, init_iterations = group_settings(group, defaults)
        if strength == 0.0:
            continue
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
            if _is_dtensor(p):
                sharded.append((p, role, strength, k, iterations, init_iterations, group, layout))
            elif role == "qkv" and not L.is_default(layout):
                fused.append((p, layout))
            else:
                by_role[role].append(p)
        for batch in _by_device_and_dtype(by_role["matrix"]):
            us, vs, sig = _matrix_batch(batch, state, iterations, init_iterations)
            pending.matrices.append((batch, us, vs, sig, strength, k, group))
        for p in by_role["qkv"]:
            u, v, sig = _blocked(p, 3, state, iterations, init_iterations)
            pending.blocked.append((p, u, v, sig, strength, k, group))
        for p, (sizes, axis) in fused:
            us, vs, sig = _fused(p, (sizes, axis), state, iterations, init_iterations)
            pending.fused.append((p, sizes, axis, us, vs, sig, strength, k, group))
        for role in ("bias", "scale"):
            for batch in _by_device_and_dtype(by_role[role]):
                xs, coef = vector_terms(batch, role, k)
                pending.vectors.append((batch, xs, coef, role, strength, group))
    if sharded:
        from .distributed import prepare_sharded

        prepare_sharded(sharded, state, pending)
    return pending


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

    for ps, us, vs, sig, strength, k, group in pending.matrices:
        alpha = matrix_step(sig, k, _lr_strength(group["lr"], strength, found_inf))
        if _eager_cpu(alpha):  # read the step sizes once and fold them into addr_'s alpha
            scaled_vs, alphas = vs, [-a for a in alpha.tolist()]
        else:
            scaled_vs, alphas = torch._foreach_mul(vs, list((-alpha).unbind())), [1.0] * len(ps)
        stored: list[Tensor] = []
        fresh: list[Tensor] = []
        for p, u, v, sv, a, s in zip(ps, us, vs, scaled_vs, alphas, sig.unbind()):
            if not has_grad(p):
                continue
            st = state[p]
            if "spectral_u" in st:  # in place: the state keeps its tensors (a compiled step then never recompiles)
                stored += (st["spectral_u"], st["spectral_v"], st["spectral_sigma"])
                fresh += (u, v, s)
            else:
                st["spectral_u"], st["spectral_v"], st["spectral_sigma"] = u, v, s.clone()
            if p.dtype == torch.float32 and p.is_contiguous():  # under no_grad: in place on the leaf
                p.view(p.shape[0], -1).addr_(u, sv, alpha=a)
            else:
                _add(p, torch.outer(u, sv * a).reshape(p.shape), st)
        if stored:
            torch._foreach_copy_(stored, _keep_on_skip(stored, fresh, found_inf))
    for p, u, v, sig, strength, k, group in pending.blocked:
        if not has_grad(p):
            continue
        alpha = matrix_step(sig, k, _lr_strength(group["lr"], strength, found_inf))
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
        update = (u * -alpha.unsqueeze(-1)).unsqueeze(-1) * v.unsqueeze(-2)  # (b, m, n)
        _add(p, update.reshape(p.shape), st)
    for p, sizes, axis, us, vs, sig, strength, k, group in pending.fused:  # W_j ← W_j − α_j u_j v_jᵀ, block by block
        if not has_grad(p):
            continue
        alpha = matrix_step(sig, k, _lr_strength(group["lr"], strength, found_inf))
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
        fraction = vector_fraction(coef, _lr_strength(group["lr"], strength, found_inf))
        steps = [-f for f in fraction.tolist()] if _eager_cpu(fraction) else list((-fraction).unbind())
        keep = [i for i, p in enumerate(ps) if has_grad(p)]
        if not keep:
            continue
        targets = [ps[i].to_local() if _is_dtensor(ps[i]) else ps[i] for i in keep]
        updates = torch._foreach_mul([xs[i] for i in keep], [steps[i] for i in keep])
        if targets[0].dtype in LOW_PRECISION and not _is_dtensor(ps[keep[0]]):
            for i, t, d in zip(keep, targets, updates):
                add_compensated(t, d, state.setdefault(ps[i], {}))
            continue
        if targets[0].dtype != torch.float32:  # float64; and sharded bf16/fp16 vectors, rounded (no residual)
            updates = [d.to(t.dtype) for d, t in zip(updates, targets)]
        torch._foreach_add_(targets, updates)


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
