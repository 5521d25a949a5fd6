"""``describe``: the table of every tensor and the rule applied to it.

One row per tensor: its name, shape (and how the regularizer views it: a conv kernel as out × in·kh·kw, a ``qkv``
tensor as its blocks), role, strength, k, and the rule of :func:`specopt.roles.infer` (or the override) that chose
the role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from . import layouts as L
from .roles import AUTO, Tagged, param_groups, roles_and_layouts, tag


def _shape_text(param: torch.Tensor, concrete: str, layout: L.Layout | None) -> str:
    shape = "×".join(map(str, param.shape)) or "scalar"
    if concrete == "matrix" and param.ndim > 2:
        shape += f" (as {param.shape[0]}×{param[0].numel()})"
    elif layout is not None:
        sizes, axis = layout
        if L.is_default(layout):
            shape += f" (as 3×{sizes[0]}×{param.shape[1]})"
        elif len(set(sizes)) == 1:
            dims = f"{sizes[0]}×{param.shape[1]}" if axis == 0 else f"{param.shape[0]}×{sizes[0]}"
            shape += f" (as {len(sizes)}×{dims}{', by columns' if axis else ''})"
        else:
            shape += f" (as {'+'.join(map(str, sizes))} {'rows' if axis == 0 else 'columns'})"
    return shape


def _rows(groups: Iterable[Mapping[str, Any]], defaults: Mapping[str, Any],
          known: Mapping[int, Tagged]) -> list[tuple[str, ...]]:
    rows = []
    for gi, group in enumerate(groups):
        names = group.get("param_names") or [
            known[id(p)].name if id(p) in known else f"group{gi}.param{j}" for j, p in enumerate(group["params"])]
        strength = group.get("spectral_strength", defaults.get("spectral_strength", "unset"))
        k = group.get("k", defaults.get("k", "unset"))
        concrete, layouts = roles_and_layouts(group, defaults.get("role", AUTO))
        for name, param, role, layout in zip(names, group["params"], concrete, layouts):
            active = role != "none" and param.numel() > 0
            tagged = known.get(id(param))
            if tagged is None:
                rule = ""
            elif tagged.role == role:
                rule = tagged.rule
            else:  # the group decided: plain model.parameters() (role auto), an override, a hand-made group
                source = ("its group's roles" if "roles" in group
                          else f"group role {group.get('role', defaults.get('role', AUTO))!r}")
                rule = f"{source} (inferred: {tagged.role})"
            rows.append((name, _shape_text(param, role, layout), role, str(strength) if active else "-",
                         str(k) if active else "-", _form(group, defaults) if active else "-", rule))
    return rows


def _form(group: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """The pull's form of a group: ``two-sided`` (the paper's R) or ``one-sided``, ``+precondition`` when the step is
    divided by Adam's √v̂ + ε; ``unset`` where neither the group nor the optimizer says."""
    pull = group.get("spectral_pull", defaults.get("spectral_pull"))
    if pull is None:
        return "unset"
    return pull + ("+precondition" if group.get("spectral_precondition", defaults.get("spectral_precondition"))
                   else "")


def describe(obj: Any, model: nn.Module | None = None) -> str:
    """A table of every tensor and the rule applied to it, for a model, a list of groups or an optimizer.

    ``print(specopt.describe(optimizer, model))`` shows what is regularized: name, shape (and how a tensor is
    viewed: a conv kernel as out × in·kh·kw, a ``qkv`` tensor as its blocks), role, strength, k, the pull's form
    (``two-sided`` or ``one-sided``, ``+precondition``), and the rule that
    chose the role (from :func:`infer`, or the override). With ``model``, tensors of groups built from
    ``model.parameters()`` (as HF ``Trainer`` builds them) are shown by their names in the model. Strength and k:
    ``-`` for a tensor that is not regularized (role ``none``), ``unset`` where neither the group nor the
    optimizer sets it (a plain list of groups: the optimizer's default will apply).
    """
    if isinstance(obj, nn.Module):
        model = obj if model is None else model
        groups: list[Mapping[str, Any]] = param_groups(obj, split_roles=True)
        defaults: Mapping[str, Any] = {}
    elif isinstance(obj, torch.optim.Optimizer):
        groups, defaults = obj.param_groups, obj.defaults
    else:
        groups, defaults = list(obj), {}
    known = {id(t.param): t for t in tag(model)} if model is not None else {}
    rows = [("name", "shape", "role", "strength", "k", "form", "rule"), *_rows(groups, defaults, known)]
    widths = [max(len(r[i]) for r in rows) for i in range(7)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths).rstrip())
    return "\n".join(lines)
