"""Parameter roles: which regularization rule applies to which tensor.

Spectral regularization treats every parameter by its *role* (the optax notion of a mask):

========  =============================================  =========================================
role      penalty R                                      decoupled direction ∇R
========  =============================================  =========================================
matrix    (σ1(W)^k − 1)²  (conv: W as out × in·kh·kw)    2k·σ^{k−1}(σ^k − 1)·u vᵀ
qkv       Σ_{j∈{q,k,v}} (σ1(W_j)^k − 1)²                 block j: 2k·σ_j^{k−1}(σ_j^k − 1)·u_j v_jᵀ
          (W = [W_q; W_k; W_v], three equal row blocks)
bias      ‖b‖₂^{2k}  (‖·‖₂ of the flattened tensor)      2k·‖b‖^{2k−2}·b
scale     Σᵢ (γᵢ − 1)²                                   2(γ − 1)
none      0  (learnable scalars, log temperatures)       0
========  =============================================  =========================================

Shape alone cannot tell a LayerNorm scale from a bias, a positional embedding from a weight matrix, or a fused
q/k/v projection from one matrix, so :func:`param_groups` walks the modules and tags each parameter (rules in
:func:`infer_role`). A group without a ``role`` key (e.g. plain ``model.parameters()``) uses the role ``"auto"``:
tensors with two or more dimensions are matrices, everything else is left alone (``none``). This default never
pulls a normalization scale toward 0 by mistake; use :func:`param_groups` to regularize biases and scales as the
paper does, and to get the ``qkv`` and additive-embedding rules of :func:`infer_role`.

Why ``qkv``: ``nn.MultiheadAttention`` stores q, k and v as one 3E × E ``in_proj_weight``. Its σ1 lies
between max_j σ1(W_j) and √3·max_j σ1(W_j) (≈ 1.9 at init for E = 192, while each block is ≈ 1.4), so pulling
the stack to 1 pushes every projection below 1. The ``qkv`` role regularizes each block as its own matrix (own
σ1, own power-iteration vectors).

Embedding tables (``nn.Embedding``/``nn.EmbeddingBag`` ``weight``, num × dim) are matrices: a lookup is the linear
map x ↦ Wᵀx on one-hot x, and σ1(Wᵀ) = σ1(W) is that map's operator norm (it also bounds every row's norm).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

ROLES = ("matrix", "qkv", "bias", "scale", "none")
AUTO = "auto"

_NORM_TYPES: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*
    nn.LocalResponseNorm,
)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)

_SCALE_NAMES = ("weight", "scale", "gamma")

QKV_MODULE_NAMES = ("qkv", "qkv_proj", "Wqkv")
"""Local module names (case-sensitive) of fused q/k/v ``nn.Linear`` layers laid out as [W_q; W_k; W_v] (timm and
torchvision Swin ``qkv``, ``qkv_proj``, MosaicML's ``Wqkv``): their weight gets the ``qkv`` role when its
out_features is divisible by 3. Deliberately absent: ``query_key_value`` (GPT-NeoX/BLOOM interleave q, k and v per
head, so the three row blocks are not W_q, W_k, W_v) and ``in_proj`` (Mamba's is [x; z], not q/k/v); such a layer
is a plain matrix unless ``roles`` says otherwise."""

NONE_NAME_PARTS = ("logit_scale",)
"""Substrings of a parameter's lowercased local name that mark it as left alone (``none`` role): ``logit_scale`` is a
log temperature (torchvision Swin V2's per-head heads × 1 × 1 ``logit_scale``), neither a weight matrix nor a
bias."""

ADDITIVE_NAME_PARTS = ("token", "pos_emb", "position_emb", "positional_emb", "pos_embed", "bias")
"""Substrings of a ≥ 2-D parameter's lowercased local name that mark it as added to activations (``bias`` role)."""

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def check_role(role: str) -> str:
    """Return ``role`` if valid, else raise a one-line ``ValueError`` listing the valid roles."""
    if role not in ROLES and role != AUTO:
        raise ValueError(f"unknown role {role!r}; valid roles are {', '.join(ROLES + (AUTO,))}")
    return role


def resolve_role(role: str, param: torch.Tensor) -> str:
    """The concrete role of ``param`` in a group whose role is ``role`` (``auto`` → by shape)."""
    if role == AUTO:
        return "matrix" if param.ndim >= 2 else "none"
    return role


def check_param_role(role: str, param: torch.Tensor, name: str) -> str:
    """Return the concrete ``role`` if ``param`` can have it, else raise a one-line ``ValueError`` that names it
    ``name``: ``qkv`` needs a 2-D tensor whose first dimension is divisible by 3."""
    if role == "qkv" and (param.ndim != 2 or param.shape[0] % 3):
        shape = "×".join(map(str, param.shape)) or "scalar"
        raise ValueError(
            f"role 'qkv' needs a 2-D weight whose rows split into three equal blocks (first dim divisible by 3); "
            f"{name} has shape {shape}: give it role 'matrix'"
        )
    return role


def _is_qkv(module: nn.Module, name: str, param: torch.Tensor, module_name: str) -> bool:
    if param.ndim != 2 or param.shape[0] % 3:
        return False
    if isinstance(module, nn.MultiheadAttention):
        return name == "in_proj_weight"
    local_module = module_name.rpartition(".")[2]
    return isinstance(module, nn.Linear) and name == "weight" and local_module in QKV_MODULE_NAMES


def infer_role(module: nn.Module, name: str, param: torch.Tensor, *, module_name: str = "") -> str:
    """Role of parameter ``name`` (its local name, e.g. ``"weight"``) owned directly by ``module``.

    ``module_name`` is the module's qualified name in the model (``"blocks.0.attn.qkv"``), as
    ``model.named_modules()`` gives it; only the fused-Linear ``qkv`` rule uses it (its last component). Rules,
    first match wins:

    * 0-dimensional tensors (learnable scalars) → none;
    * log temperatures → none: a tensor whose lowercased local name contains one of :data:`NONE_NAME_PARTS`
      (``logit_scale``: torchvision Swin V2's per-head heads × 1 × 1 ``logit_scale``, a 1-element one as in
      SigLIP; CLIP's is 0-dimensional). As a matrix it would be pulled to norm 1, as a bias to 0 — both change the
      attention's or the logits' temperature rather than regularize a layer;
    * normalization layers (LayerNorm, BatchNorm, GroupNorm, InstanceNorm, RMSNorm, or any module whose class
      name contains ``Norm``): ``weight``/``scale``/``gamma`` → scale, anything else → bias;
    * fused q/k/v projections → qkv: ``nn.MultiheadAttention.in_proj_weight`` (it exists only when q, k and v
      share the embed dim; the separate ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` are matrices), and
      the ``weight`` of an ``nn.Linear`` whose local module name is in :data:`QKV_MODULE_NAMES` (``qkv``,
      ``qkv_proj``, ``Wqkv``; case-sensitive) — in both cases only when the first dimension is divisible by 3.
      The role assumes rows [W_q; W_k; W_v] in three equal blocks. Fused layers known to be laid out otherwise
      are not matched by name: GPT-NeoX/BLOOM's ``query_key_value`` (q, k, v interleaved per head) and Mamba's
      ``in_proj`` ([x; z]) are plain matrices. A ``qkv``-named layer laid out otherwise (grouped-query blocks of
      unequal size whose row count happens to divide by 3) should be overridden to ``matrix`` through ``roles``;
    * additive embeddings → bias: a ≥ 2-D tensor not owned by ``nn.Embedding``/``nn.EmbeddingBag`` whose
      lowercased local name contains one of :data:`ADDITIVE_NAME_PARTS` (``token``, ``pos_emb``, ``position_emb``,
      ``positional_emb``, ``pos_embed``, ``bias``): class/register/mask tokens, positional embeddings,
      ``nn.MultiheadAttention``'s ``bias_k``/``bias_v``, relative-position bias tables. They are added to the
      activations, so like a bias they are pulled toward 0, not to σ1 = 1;
    * other tensors with ≥ 2 dimensions (Linear, Conv, Embedding tables, attention projections, ...) → matrix;
    * 1-D tensors named weight/scale/gamma in other modules → scale; other 1-D tensors → bias.
    """
    if param.ndim == 0:
        return "none"
    lowered = name.lower()
    if any(part in lowered for part in NONE_NAME_PARTS):
        return "none"
    if isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower():
        return "scale" if name in _SCALE_NAMES else "bias"
    if param.ndim >= 2:
        if _is_qkv(module, name, param, module_name):
            return "qkv"
        if not isinstance(module, _EMBEDDING_TYPES) and any(part in lowered for part in ADDITIVE_NAME_PARTS):
            return "bias"
        return "matrix"
    return "scale" if name in _SCALE_NAMES else "bias"


def named_roles(model: nn.Module, roles: Mapping[str, str] | None = None) -> list[tuple[str, torch.Tensor, str]]:
    """``(qualified name, parameter, role)`` for every parameter of ``model`` (shared tensors once).

    ``roles`` maps glob patterns on qualified names to roles and overrides the inferred role, e.g.
    ``{"head.*": "none", "*.pos_embedding": "none"}``. The first matching pattern wins. An override to ``qkv`` on a
    tensor that cannot have it raises a one-line ``ValueError``.
    """
    overrides = {pattern: check_role(role) for pattern, role in (roles or {}).items()}
    seen: set[int] = set()
    out: list[tuple[str, torch.Tensor, str]] = []
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{local}" if module_name else local
            role = infer_role(module, local, param, module_name=module_name)
            for pattern, override in overrides.items():
                if fnmatch.fnmatchcase(name, pattern):
                    role = check_param_role(resolve_role(override, param), param, repr(name))
                    break
            out.append((name, param, role))
    return out


def param_groups(
    model: nn.Module,
    strength: float | None = None,
    k: float | None = None,
    roles: Mapping[str, str] | None = None,
    split_roles: bool = False,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Parameter groups of ``model`` tagged with their spectral-regularization roles.

    By default returns a single group with ``params``, ``param_names`` and ``roles`` (one role per parameter):
    one group keeps the base optimizer's per-group overhead as low as plain ``model.parameters()``. With
    ``split_roles=True`` returns one group per non-empty role (order matrix, qkv, bias, scale, none), each with a
    ``role`` key, so that strength, k, lr, ... can differ per role. ``strength`` and ``k`` (when given) become the
    groups' ``spectral_strength`` and ``k``; any other keyword (``lr``, ``weight_decay``, ...) is copied into every
    group. Pass the result to any optimizer::

        opt = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)
        opt = specopt.Spectral(torch.optim.SGD(specopt.param_groups(model), lr=0.1))
    """
    tagged = named_roles(model, roles)
    if not tagged:
        raise ValueError("the model has no parameters")
    extra: dict[str, Any] = dict(group_options)
    if strength is not None:
        extra["spectral_strength"] = strength
    if k is not None:
        extra["k"] = k
    if not split_roles:
        return [{
            "params": [p for _, p, _ in tagged],
            "param_names": [n for n, _, _ in tagged],
            "roles": [r for _, _, r in tagged],
            **extra,
        }]
    groups = []
    for role in ROLES:
        members = [(n, p) for n, p, r in tagged if r == role]
        if members:
            groups.append({"params": [p for _, p in members], "param_names": [n for n, _ in members],
                           "role": role, **extra})
    return groups


def group_roles(group: Mapping[str, Any], default: str = AUTO) -> list[str]:
    """The concrete role of every parameter of ``group`` (its ``roles`` list, else its ``role`` or ``default``).

    Raises a one-line ``ValueError`` for an unknown role or a ``qkv`` role on a tensor that is not 2-D with a first
    dimension divisible by 3 (named by the group's ``param_names`` when it has them).
    """
    params = group["params"]
    roles = group.get("roles")
    if roles is not None:
        if len(roles) != len(params):
            raise ValueError(f"a group's 'roles' has {len(roles)} entries for {len(params)} parameters")
        concrete = [resolve_role(check_role(r), p) for r, p in zip(roles, params)]
    else:
        role = check_role(group.get("role", default))
        concrete = [resolve_role(role, p) for p in params]
    if "qkv" in concrete:
        names = group.get("param_names")
        for j, (p, r) in enumerate(zip(params, concrete)):
            check_param_role(r, p, repr(names[j]) if names else f"parameter {j} of its group")
    return concrete


def _rows(groups: Iterable[Mapping[str, Any]], defaults: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for gi, group in enumerate(groups):
        names = group.get("param_names") or [f"group{gi}.param{j}" for j in range(len(group["params"]))]
        strength = group.get("spectral_strength", defaults.get("spectral_strength", "-"))
        k = group.get("k", defaults.get("k", "-"))
        for name, param, concrete in zip(names, group["params"], group_roles(group, defaults.get("role", AUTO))):
            shape = "×".join(map(str, param.shape)) or "scalar"
            if concrete == "matrix" and param.ndim > 2:
                shape += f" (as {param.shape[0]}×{param[0].numel()})"
            elif concrete == "qkv":
                shape += f" (as 3×{param.shape[0] // 3}×{param.shape[1]})"
            active = concrete != "none" and param.numel() > 0
            rows.append((name, shape, concrete, str(strength) if active else "-", str(k) if active else "-"))
    return rows


def describe(obj: Any) -> str:
    """A table of every tensor and the rule applied to it, for a model, a list of groups or an optimizer.

    ``print(specopt.describe(optimizer))`` shows what is regularized: name, shape, role, strength and k.
    """
    if isinstance(obj, nn.Module):
        groups: list[Mapping[str, Any]] = param_groups(obj, split_roles=True)
        defaults: Mapping[str, Any] = {}
    elif isinstance(obj, torch.optim.Optimizer):
        groups, defaults = obj.param_groups, obj.defaults
    else:
        groups, defaults = list(obj), {}
    rows = [("name", "shape", "role", "strength", "k"), *_rows(groups, defaults)]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
