"""Parameter roles: which regularization rule applies to which tensor.

Spectral regularization treats every parameter by its *role* (the optax notion of a mask):

========  ==========================================  =============================
role      penalty R                                   decoupled direction ∇R
========  ==========================================  =============================
matrix    (σ1(W)^k − 1)²  (conv: W as out × in·kh·kw)  2k·σ^{k−1}(σ^k − 1)·u vᵀ
bias      ‖b‖₂^{2k}                                   2k·‖b‖^{2k−2}·b
scale     Σᵢ (γᵢ − 1)²                                2(γ − 1)
none      0                                           0
========  ==========================================  =============================

Shape alone cannot tell a LayerNorm scale from a bias, so :func:`param_groups` walks the modules and tags each
parameter. A group without a ``role`` key (e.g. plain ``model.parameters()``) uses the role ``"auto"``: tensors with
two or more dimensions are matrices, everything else is left alone (``none``). This default never pulls a
normalization scale toward 0 by mistake; use :func:`param_groups` to regularize biases and scales as the paper does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

ROLES = ("matrix", "bias", "scale", "none")
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


def infer_role(module: nn.Module, name: str, param: torch.Tensor) -> str:
    """Role of parameter ``name`` (its local name, e.g. ``"weight"``) owned directly by ``module``.

    * normalization layers (LayerNorm, BatchNorm, GroupNorm, InstanceNorm, RMSNorm, or any module whose class
      name contains ``Norm``): ``weight`` → scale, ``bias`` → bias;
    * tensors with ≥ 2 dimensions (Linear, Conv, Embedding, attention projections, ...) → matrix;
    * 1-D tensors named weight/scale/gamma in other modules → scale; other 1-D tensors → bias;
    * 0-dimensional tensors (learnable scalars) → none.
    """
    is_norm = isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()
    if param.ndim == 0:
        return "none"
    if is_norm:
        return "scale" if name in _SCALE_NAMES else "bias"
    if param.ndim >= 2:
        return "matrix"
    return "scale" if name in _SCALE_NAMES else "bias"


def named_roles(model: nn.Module, roles: Mapping[str, str] | None = None) -> list[tuple[str, torch.Tensor, str]]:
    """``(qualified name, parameter, role)`` for every parameter of ``model`` (shared tensors once).

    ``roles`` maps glob patterns on qualified names to roles and overrides the inferred role, e.g.
    ``{"head.*": "none", "*.pos_embedding": "none"}``. The first matching pattern wins.
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
            role = infer_role(module, local, param)
            for pattern, override in overrides.items():
                if fnmatch.fnmatchcase(name, pattern):
                    role = override
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
    ``split_roles=True`` returns one group per non-empty role (order matrix, bias, scale, none), each with a
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
    """The concrete role of every parameter of ``group`` (its ``roles`` list, else its ``role`` or ``default``)."""
    params = group["params"]
    roles = group.get("roles")
    if roles is not None:
        if len(roles) != len(params):
            raise ValueError(f"a group's 'roles' has {len(roles)} entries for {len(params)} parameters")
        return [resolve_role(check_role(r), p) for r, p in zip(roles, params)]
    role = check_role(group.get("role", default))
    return [resolve_role(role, p) for p in params]


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
