r"""The spectral step's math, written once: power iteration, σ̂, the truncated step sizes, the rank-one update.

Every path that takes the decoupled step calls these functions — :mod:`specopt.functional` (``SpectralAdam``,
``SpectralAdamW``, ``Spectral(optimizer)``), :mod:`specopt.stacked` (vectorized seeds, batched over a leading slice
dimension), :mod:`specopt.distributed` (DTensor shards: the same normalisation and step size, with all-reduced
partial mat-vecs) — and the coupled :mod:`specopt.penalty` shares the power iteration. Each function comes batched
over leading dimensions (a stack of matrices: q/k/v blocks, seeds) and, where matrices have different shapes, in a
foreach form over lists.

For a matrix :math:`W` (m × n, float32) and unit vectors u, v from the previous step (warm start), one power
iteration and the step are

.. math::
    v &\leftarrow W^\top u/\lVert W^\top u\rVert,\qquad s = W v,\qquad \hat\sigma = \lVert s\rVert,\qquad
        u \leftarrow s/\hat\sigma\\
    \alpha &= \operatorname{clamp}\big(\eta\lambda\,c(\hat\sigma),\ \min(0, \hat\sigma - 1),\ \max(0, \hat\sigma - 1)\big),
        \qquad c(\sigma) = 2k\,\sigma^{k-1}(\sigma^k - 1),\qquad W \leftarrow W - \alpha\,u v^\top

and for a bias b and a scale γ the fractions :math:`\min(1, \eta\lambda\,2k\lVert b\rVert^{2k-2})` of b and
:math:`\min(1, 2\eta\lambda)` of γ − 1 (see :mod:`specopt.functional` for why the truncation never overshoots).

**Fused order** (``fused_spectral=True``). The iteration above reads W twice in sequence (Wᵀu, then W v with the
new v), before the base optimizer writes W, and the rank-one update reads and writes W once more. In the fused
order both mat-vecs are taken from the vectors of the previous step, :math:`s = W v_{t-1}` and
:math:`r = W^\top u_{t-1}`, on the weights the step has just written (:func:`matvecs`): neither depends on the other, so a
compiler may take both in the loop that writes W, the rank-one update folded into the same write (on a CPU,
Inductor fused W·v into that loop but not Wᵀu, and added full-size temporaries: slower than the plain order,
docs/benchmarks.md). The next step reads its estimate from them (:func:`from_matvecs`):

.. math::
    \hat\sigma = \lVert s\rVert,\quad u_t = s/\hat\sigma,\quad v_t = r/\lVert r\rVert,\qquad
    W \leftarrow \mathrm{base}(W) - \alpha\,u_t v_{t-1}^\top

The correction uses :math:`v_{t-1}` (the vector ``s`` was taken with), so :math:`u_t = W v_{t-1}/\hat\sigma` holds
exactly and the never-overshoot bound is unchanged; σ̂ is still :math:`\lVert W v\rVert \le \sigma_1(W)` for a unit
v. Each step is then one *half* of a power iteration on each of two interleaved chains (u from v, v from u), so the
estimate lags the plain order's by about one step (measured in docs/specopt.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_TINY = 1e-30


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


def initial_blocks(shapes: list[tuple[int, int]], device: torch.device, blocks: int = 1
                   ) -> tuple[list[Tensor], list[Tensor]]:
    """The deterministic starts (:func:`initial_vectors`) of matrices of the given (rows, cols) ``shapes``, as the
    lists of their u's and v's; with ``blocks`` > 1 (one shape: equal row blocks) each is expanded to (blocks, ·)."""
    starts = [initial_vectors(m, n, device) for m, n in shapes]
    if blocks > 1:
        starts = [(u.expand(blocks, -1), v.expand(blocks, -1)) for u, v in starts]
    return [u for u, _ in starts], [v for _, v in starts]


def unit_or_previous(x: Tensor, norm: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
    """(x/norm, ok): ``x`` scaled to unit length by its (broadcastable) ``norm``, or ``previous`` where that norm is
    zero or non-finite — the one rule every power iteration (local, batched, sharded) keeps its vectors by."""
    ok = torch.isfinite(norm) & (norm > _TINY)
    return torch.where(ok, x / norm.clamp_min(_TINY), previous), ok


def normalize(x: Tensor, previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x/‖x‖, ‖x‖, ok) over the last dim; where a norm is zero or non-finite, ``previous`` is kept."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    unit, ok = unit_or_previous(x, norm, previous)
    return unit, norm.squeeze(-1), ok.squeeze(-1)


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
        v_new, _, ok_v = normalize((u.unsqueeze(-2) @ w).squeeze(-2), v)
        u_new, sigma, ok_u = normalize((w @ v_new.unsqueeze(-1)).squeeze(-1), u)
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
    mm = torch.compiler.is_compiling() and MATVEC_FORM == "mm"  # extern BLAS calls: W stays out of fused loops
    for _ in range(iterations):
        ts = [(u.unsqueeze(0) @ w).squeeze(0) if mm else torch.mv(w.t(), u) for w, u in zip(ws, us_new)]
        nvs = norms(ts)
        vs_new = torch._foreach_div(ts, nvs)  # a zero norm gives inf/NaN here, caught by ``ok`` below
        ss = [(w @ v.unsqueeze(1)).squeeze(1) if mm else torch.mv(w, v) for w, v in zip(ws, vs_new)]
        sigmas = norms(ss)
        us_new = torch._foreach_div(ss, sigmas)
    sigma, nv = torch.stack(sigmas), torch.stack(nvs)
    prod = sigma * nv  # zero, NaN or inf in either norm shows in the product
    ok = (prod > _TINY) & (prod < float("inf"))
    if eager_cpu(ws[0]) and bool(ok.all()):  # the common case; on CPU the check costs no device sync
        return list(us_new), list(vs_new), sigma, ok
    oks = ok.unbind()
    us_out = [torch.where(o, a, b) for o, a, b in zip(oks, us_new, us)]
    vs_out = [torch.where(o, a, b) for o, a, b in zip(oks, vs_new, vs)]
    return us_out, vs_out, torch.where(ok, sigma, 0.0), ok


def norms(xs: list[Tensor]) -> list[Tensor]:
    """Euclidean norms of a list of tensors: one ``_foreach_norm`` eagerly; under ``torch.compile`` plain sums of
    squares, which Inductor fuses into its own loops (an extern ``_foreach_norm`` call per list costs more than the
    arithmetic on these small vectors)."""
    if torch.compiler.is_compiling():
        return [x.square().sum().sqrt() for x in xs]
    return list(torch._foreach_norm(xs))


def eager_cpu(t: Tensor) -> bool:
    """Whether reading ``t`` on the host is free: a CPU tensor outside a compiled region."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def matrix_coefficient(sigma: Tensor, k: float) -> Tensor:
    r""":math:`c(\sigma) = \partial R/\partial\sigma = 2k\,\sigma^{k-1}(\sigma^k - 1)` for :math:`R = (\sigma^k - 1)^2`."""
    if k == 1:
        return 2.0 * (sigma - 1.0)
    pk1 = sigma.pow(k - 1)
    return (2.0 * k) * pk1 * (pk1 * sigma - 1.0)


def matrix_step(sigma: Tensor, k: float, lr_strength: Any, one_sided: bool = False) -> Tensor:
    r"""How far σ1 moves toward 1: :math:`\alpha = \operatorname{clamp}(\eta\lambda c(\hat\sigma))` between 0 and
    :math:`\hat\sigma - 1` (so :math:`W \leftarrow W - \alpha u v^\top` never crosses 1). ``lr_strength`` is ηλ, a
    number or a tensor (the preconditioned form passes :math:`\eta\lambda\rho`, :func:`adam_weight`); σ̂ = 0 (a
    failed power iteration) gives 0. ``one_sided``: the step of :math:`R^+ = \max(\sigma^k - 1, 0)^2`, which pulls
    σ1 down while it is above 1 and leaves it alone below (α ≥ 0)."""
    gradient_step = torch.nan_to_num(lr_strength * matrix_coefficient(sigma, k), nan=0.0)  # ±inf: clamped next
    gap = sigma - 1.0
    low = torch.zeros_like(gap) if one_sided else gap.clamp(max=0.0)
    alpha = torch.minimum(torch.maximum(gradient_step, low), gap.clamp(min=0.0))
    return torch.where(sigma > 0, alpha, torch.zeros_like(alpha))


def adam_denominator(exp_avg_sq: Tensor, step: Any, beta2: float, eps: float) -> Tensor:
    r"""Adam's preconditioner :math:`D = \sqrt{v_t/(1-\beta_2^t)} + \epsilon` (float32, ``exp_avg_sq``'s shape);
    ``step`` t is a number or a tensor that broadcasts against ``exp_avg_sq`` (one count per stacked slice)."""
    correction = 1.0 - torch.as_tensor(beta2, dtype=torch.float32).pow(torch.as_tensor(step, dtype=torch.float32))
    return (exp_avg_sq.float() / correction.to(exp_avg_sq.device)).sqrt().add_(eps)


def adam_weight(u: Tensor, v: Tensor, denominator: Tensor) -> Tensor:
    r"""The preconditioned form's factor :math:`\rho = \langle u v^\top, (u v^\top) \oslash D\rangle
    = \sum_{ij} u_i^2 v_j^2 / D_{ij}`, batched: ``u`` (..., m), ``v`` (..., n), ``denominator`` D (..., m, n) give
    (...). Adam applied to the coupled penalty's gradient :math:`c\,u v^\top` steps by
    :math:`\eta\lambda c\,(u v^\top) \oslash D`; ρ is the length of that step along the unit direction
    :math:`u v^\top` per unit :math:`\eta\lambda c`, so :math:`W \leftarrow W - \eta\lambda c\rho\,u v^\top` is its
    projection on the rank-one direction (exact for the moved σ1 to first order, never a full-size step)."""
    return ((u * u).unsqueeze(-2) @ denominator.reciprocal() @ (v * v).unsqueeze(-1)).squeeze(-1).squeeze(-1)


def vector_fraction(coefficient: Tensor, lr_strength: Any) -> Tensor:
    r"""The fraction of the way to the target a bias (toward 0) or scale (toward 1) moves:
    :math:`\min(1, \eta\lambda c)` with :math:`d = c\,x` (:math:`c = 2k\lVert b\rVert^{2k-2}`, or 2 for a scale)."""
    return torch.nan_to_num(lr_strength * coefficient, nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)


def bias_coefficient(xs: list[Tensor], k: float) -> Tensor:
    r""":math:`c = 2k\lVert b\rVert^{2k-2}` of each bias in ``xs`` (float32, shape (n,)), so that
    :math:`\nabla_b\lVert b\rVert^{2k} = c\,b`; for k = 1 the constant 2 (no norm is taken)."""
    if k == 1:
        return torch.full((len(xs),), 2.0, device=xs[0].device)
    return torch.stack(norms(xs)).pow(2 * k - 2).mul_(2.0 * k)


def rank_one(u: Tensor, v: Tensor, alpha: Tensor) -> Tensor:
    r"""The matrix step :math:`-\alpha\,u v^\top`, batched: ``u`` (..., m), ``v`` (..., n), ``alpha`` (...) give
    (..., m, n) — one plain matrix, the q/k/v blocks of a fused projection, one layer of several seeds."""
    return (u * -alpha.unsqueeze(-1)).unsqueeze(-1) * v.unsqueeze(-2)


MATVEC_FORM = "mm"
"""How :func:`matvecs` is written under ``torch.compile``: ``"mm"`` (matrix products, extern BLAS calls on the written
W), ``"sum"`` (sums of products, which Inductor fuses into the loop that writes W) or ``"mv"``; docs/benchmarks.md
has what each gave."""


def matvecs(ws: list[Tensor], us: list[Tensor], vs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    r"""The fused order's two mat-vecs of each matrix, from the same (previous) vectors: ``(W v, Wᵀ u)`` per
    matrix. Neither depends on the other, so both can be taken in one pass over W. Eagerly two ``mv`` (MKL); under
    ``torch.compile`` as :data:`MATVEC_FORM` says."""
    if torch.compiler.is_compiling() and MATVEC_FORM == "mm":  # extern matrix products of the written W
        return ([(w @ v.unsqueeze(-1)).squeeze(-1) for w, v in zip(ws, vs)],
                [(u.unsqueeze(-2) @ w).squeeze(-2) for w, u in zip(ws, us)])
    if torch.compiler.is_compiling() and MATVEC_FORM == "sum":  # fused by Inductor into the loop that writes W
        return [(w * v).sum(-1) for w, v in zip(ws, vs)], [(w * u.unsqueeze(-1)).sum(-2) for w, u in zip(ws, us)]
    return [torch.mv(w, v) for w, v in zip(ws, vs)], [torch.mv(w.t(), u) for w, u in zip(ws, us)]


def from_matvecs(
    wvs: list[Tensor], wtus: list[Tensor], us: list[Tensor], vs: list[Tensor]
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    r"""The fused order's estimate from :func:`matvecs` of the pre-step weights: ``(u, v_next, σ̂ (n,), ok (n,))``
    with :math:`\hat\sigma = \lVert W v\rVert`, :math:`u = W v/\hat\sigma` (pair it with the *previous* v in the
    rank-one step) and :math:`v_{next} = W^\top u_{prev}/\lVert W^\top u_{prev}\rVert`. Where a norm is zero or
    non-finite the previous vectors are kept and σ̂ is 0 (no step), as in :func:`power_iteration`."""
    sigmas, nvs = norms(wvs), norms(wtus)
    sigma, nv = torch.stack(sigmas), torch.stack(nvs)
    prod = sigma * nv
    ok = (prod > _TINY) & (prod < float("inf"))
    u_new, v_new = torch._foreach_div(wvs, sigmas), torch._foreach_div(wtus, nvs)
    if eager_cpu(sigma) and bool(ok.all()):
        return list(u_new), list(v_new), sigma, ok
    oks = ok.unbind()
    return ([torch.where(o, a, b) for o, a, b in zip(oks, u_new, us)],
            [torch.where(o, a, b) for o, a, b in zip(oks, v_new, vs)], torch.where(ok, sigma, 0.0), ok)
