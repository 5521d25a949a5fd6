"""Parameter roles: which regularization rule applies to which tensor.

Spectral regularization treats every parameter by its *role* (the optax notion of a mask):

========  =============================================  =========================================
role      penalty R                                      decoupled direction ∇R
========  =============================================  =========================================
matrix    (σ1(W)^k − 1)²  (conv: W as out × in·kh·kw)    2k·σ^{k−1}(σ^k − 1)·u vᵀ
qkv       Σ_j (σ1(W_j)^k − 1)² over the blocks W_j of a  block j: 2k·σ_j^{k−1}(σ_j^k − 1)·u_j v_jᵀ
          fused projection (default: three equal row
          blocks [W_q; W_k; W_v]; any sizes, rows or
          columns: :mod:`specopt.layouts`)
bias      ‖b‖₂^{2k}  (‖·‖₂ of the flattened tensor)      2k·‖b‖^{2k−2}·b
scale     Σᵢ (γᵢ − 1)²                                   2(γ − 1)
none      0  (learnable scalars, log temperatures)       0
========  =============================================  =========================================

Shape alone cannot tell a LayerNorm scale from a bias, a positional embedding from a weight matrix, or a fused
q/k/v projection from one matrix, so :func:`param_groups` walks the modules and tags each parameter (rules in
:func:`infer`). A group without a ``role`` key (e.g. plain ``model.parameters()``) uses the role ``"auto"``:
tensors with two or more dimensions are matrices, everything else is left alone (``none``). This default never
pulls a normalization scale toward 0 by mistake; use :func:`param_groups` to regularize biases and scales as the
paper does, and to get the ``qkv`` and additive-embedding rules of :func:`infer`.

Why ``qkv``: ``nn.MultiheadAttention`` stores q, k and v as one 3E × E ``in_proj_weight``. Its σ1 lies
between max_j σ1(W_j) and √3·max_j σ1(W_j) (≈ 1.9 at init for E = 192, while each block is ≈ 1.4), so pulling
the stack to 1 pushes every projection below 1. The ``qkv`` role regularizes each block as its own matrix (own
σ1, own power-iteration vectors). A group gives each ``qkv`` tensor its blocks in ``group["blocks"]`` (one entry
per parameter, ``None`` or ``{"sizes": (...), "axis": 0 or 1}``).

Embedding tables (``nn.Embedding``/``nn.EmbeddingBag`` ``weight``, num × dim) are matrices: a lookup is the linear
map x ↦ Wᵀx on one-hot x, and σ1(Wᵀ) = σ1(W) is that map's operator norm (it also bounds every row's norm).
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn
from torch.utils.weak import WeakTensorKeyDictionary

from . import layouts as L

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

QKV_MODULE_NAMES = L.FUSED_LINEAR_NAMES
"""Local module names (case-sensitive) of fused q/k/v ``nn.Linear`` layers laid out as [W_q; W_k; W_v] (timm and
torchvision Swin ``qkv``, Phi-3's ``qkv_proj``, MosaicML's ``Wqkv``): their weight gets the ``qkv`` role, with the
block sizes the owning attention module declares (grouped-query attention: h·d, h_kv·d, h_kv·d rows), or three
equal row blocks when it declares no head counts. Deliberately absent: ``query_key_value`` (GPT-NeoX/BLOOM/Falcon
interleave q, k and v per head: reported, a plain matrix) and ``in_proj`` (Mamba's is [x; z], not q/k/v)."""

NONE_NAME_PARTS = ("logit_scale",)
"""Substrings of a parameter's lowercased local name that mark it as left alone (``none`` role): ``logit_scale`` is a
log temperature (torchvision Swin V2's per-head heads × 1 × 1 ``logit_scale``), neither a weight matrix nor a
bias."""

LAYER_SCALE_NAME_PARTS = ("layer_scale", "layerscale")
"""Substrings of a lowercased local parameter name (torchvision ConvNeXt's C × 1 × 1 ``layer_scale``, HF's
``layer_scale_parameter``) or module class name (timm's ``LayerScale``/``LayerScale2d``) that mark a layer scale:
role ``none``."""

ADDITIVE_NAME_PARTS = ("token", "pos_emb", "position_emb", "positional_emb", "pos_embed", "bias")
"""Substrings of a ≥ 2-D parameter's lowercased local name that mark it as added to activations (``bias`` role)."""

PREFIXES = ("_orig_mod.", "module.")
"""Leading components of a qualified name that wrappers add (``torch.compile``'s ``OptimizedModule``, DDP,
FSDP1, DataParallel): stripped before ``roles`` patterns are matched, as are ``_fsdp_wrapped_module.`` and
``_checkpoint_wrapped_module.`` anywhere in the name."""

_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)

RoleSpec = Union[str, tuple[str, Mapping[str, Any]]]
"""A ``roles`` override: a role, or ``("qkv", {"sizes": (...), "axis": 0 or 1})`` to state a fused layout."""


@dataclass(frozen=True)
class Inference:
    """The role :func:`infer` gives a tensor, the rule that gave it (shown by :func:`specopt.describe`), the
    blocks of a ``qkv`` tensor (``{"sizes", "axis"}``), and, for a fused projection whose layout cannot be told,
    why."""

    role: str
    rule: str
    blocks: dict[str, Any] | None = None
    unknown: str | None = None


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


def check_param_role(role: str, param: torch.Tensor, name: str, blocks: Any = None) -> str:
    """Return the concrete ``role`` if ``param`` can have it, else raise a one-line ``ValueError`` that names it
    ``name``: ``qkv`` needs a 2-D tensor that splits into ``blocks`` (default: three equal row blocks)."""
    if role == "qkv":
        L.check_spec(blocks, param, name)
    return role


def _parametrization(module: nn.Module, name: str) -> Inference | None:
    """Rules for the stored tensors of ``torch.nn.utils.parametrize`` (owned by a ``ParametrizationList``) and of
    the legacy ``weight_norm``/``spectral_norm`` hooks; the effective weight is what the paper regularizes."""
    kinds: list[str] = []
    if type(module).__name__ == "ParametrizationList":
        kinds = [type(m).__name__ for m in module]
        stored = {"original": "w", "original0": "g", "original1": "v"}.get(name)
    else:
        stored = None
        for hook in module._forward_pre_hooks.values():
            kind, stem = type(hook).__name__, getattr(hook, "name", None)
            if kind == "WeightNorm" and name in (f"{stem}_g", f"{stem}_v"):
                kinds, stored = ["_WeightNorm"], name[-1]
            elif kind == "SpectralNorm" and name == f"{stem}_orig":
                kinds, stored = ["_SpectralNorm"], "w"
    if stored is None or not kinds:
        return None
    if kinds == ["_WeightNorm"] and stored == "g":
        return Inference("scale", "weight_norm g: the row norms of W = g·v/‖v‖, toward 1")
    if kinds == ["_WeightNorm"] and stored == "v":
        return Inference("none", "weight_norm v: W does not depend on its norm")
    if "_SpectralNorm" in kinds:
        return Inference("none", "spectral_norm: the effective weight has σ1 = 1 already")
    if "_Orthogonal" in kinds:
        return Inference("none", "orthogonal: the effective weight has σ1 = 1 already")
    return None


def infer(module: nn.Module, name: str, param: torch.Tensor, *, module_name: str = "",
          parent: nn.Module | None = None) -> Inference:
    """Role (and rule, and fused blocks) of parameter ``name`` (its local name, e.g. ``"weight"``) of ``module``.

    ``module_name`` is the module's qualified name in the model (``"blocks.0.attn.qkv"``), as
    ``model.named_modules()`` gives it, and ``parent`` the module that owns it (the attention module, whose head
    counts give a fused projection its blocks); only the fused-projection rules use them. Rules, first match wins:

    * parametrizations, judged by what they do to the effective weight W: ``weight_norm``
      (``parametrizations.weight.original0`` = g, out × 1, and ``original1`` = v; legacy ``weight_g``/``weight_v``):
      W = g·v/‖v‖ row by row, so ‖W_i‖ = |g_i| and W does not depend on ‖v‖ — weight normalization is a
      normalization of W's rows followed by a gain, so as for a LayerNorm the gain g → scale (pulled to 1: unit
      rows, 1 ≤ σ1(W) ≤ √rows, = 1 for orthogonal rows) and v → none (the normalized tensor, like a LayerNorm's
      input; its σ1 or norm would only move a quantity W ignores). ``spectral_norm`` (``original``, legacy
      ``weight_orig``) and ``orthogonal`` → none: the effective weight has σ1 = 1 by construction, the paper's
      target, and a step on the stored tensor would only reshape W's other singular values;
    * 0-dimensional tensors (learnable scalars) → none;
    * log temperatures → none: a lowercased local name containing one of :data:`NONE_NAME_PARTS`;
    * layer scales → none: timm's ``LayerScale(2d).gamma`` (any parameter of a module whose class name contains
      ``LayerScale``) and parameters named ``layer_scale`` (torchvision ConvNeXt, C × 1 × 1). A layer scale
      multiplies a residual branch and starts at 1e-5 or 1e-6 *on purpose* (the block starts as the identity):
      the scale rule would pull it to 1 (1e-5 → 0.18 in 100 steps), undoing that; the bias rule would close the
      branch; as a C × 1 matrix its σ1 = ‖γ‖ would be pulled to 1. No rule's target is its initialization;
    * normalization layers (LayerNorm, BatchNorm, GroupNorm, InstanceNorm, RMSNorm, or any module whose class
      name contains ``Norm``): ``weight``/``scale``/``gamma`` → scale, anything else → bias;
    * fused q/k/v projections → qkv, split as the model declares (:func:`specopt.layouts.detect`):
      ``nn.MultiheadAttention.in_proj_weight`` (rows E, E, E); ``nn.Linear`` named ``qkv``/``qkv_proj``/``Wqkv`` (rows
      h·d, h_kv·d, h_kv·d from the owning attention's head counts; three equal row blocks when it declares none); HF
      ``Conv1D`` ``c_attn`` (GPT-2: weight stored in × out, q, k, v are column blocks of ``split_size``); GPT-BigCode's
      ``c_attn`` Linear with multi-query attention (rows E, kv_dim, kv_dim). A fused projection whose layout cannot be
      told (CodeGen's ``qkv_proj``: ``mp_num`` chunks of [q; v; k]; GPT-NeoX/BLOOM/Falcon ``query_key_value`` and
      GPT-BigCode's ``c_attn`` without multi-query: q, k, v interleaved per head; head counts that do not add up) →
      matrix, and :func:`named_roles` warns once, with the override that settles it;
    * additive embeddings → bias: a ≥ 2-D tensor not owned by ``nn.Embedding``/``nn.EmbeddingBag`` whose
      lowercased local name contains one of :data:`ADDITIVE_NAME_PARTS` (``cls_token``, ``reg_tokens``,
      ``pos_embed``, ``positional_embedding``, ``bias_k``, relative-position bias tables): added to the
      activations, so like a bias they are pulled toward 0, not to σ1 = 1;
    * other tensors with ≥ 2 dimensions → matrix: Linear, Conv (out × in·kh·kw), embedding tables, separate
      attention projections, HF ``Conv1D`` weights (stored in × out: σ1(Wᵀ) = σ1(W), the same rule);
    * 1-D tensors named weight/scale/gamma in other modules → scale; other 1-D tensors → bias.
    """
    special = _parametrization(module, name)
    if special is not None:
        return special
    if param.ndim == 0:
        return Inference("none", "learnable scalar")
    lowered = name.lower()
    if any(part in lowered for part in NONE_NAME_PARTS):
        return Inference("none", "log temperature")
    if ("layerscale" in type(module).__name__.lower()
            or any(part in lowered for part in LAYER_SCALE_NAME_PARTS)):
        return Inference("none", "layer scale: its small init is on purpose")
    if isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower():
        if name in _SCALE_NAMES:
            return Inference("scale", "normalization scale")
        return Inference("bias", "normalization shift")
    if param.ndim >= 2:
        fused = L.detect(module, name, param, module_name, parent)
        if fused is not None and fused.layout is not None:
            return Inference("qkv", fused.rule, L.to_spec(fused.layout))
        if fused is not None:
            return Inference("matrix", "fused projection of unknown layout: one matrix", unknown=fused.unknown)
        if not isinstance(module, _EMBEDDING_TYPES) and any(part in lowered for part in ADDITIVE_NAME_PARTS):
            return Inference("bias", "additive embedding")
        if isinstance(module, _EMBEDDING_TYPES):
            return Inference("matrix", "embedding table")
        if L.is_hf_conv1d(module):
            return Inference("matrix", "HF Conv1D (in × out): σ1(Wᵀ) = σ1(W)")
        return Inference("matrix", "weight")
    if name in _SCALE_NAMES:
        return Inference("scale", "1-D weight")
    return Inference("bias", "bias")


def infer_role(module: nn.Module, name: str, param: torch.Tensor, *, module_name: str = "",
               parent: nn.Module | None = None) -> str:
    """The role of :func:`infer` (its rules are listed there)."""
    return infer(module, name, param, module_name=module_name, parent=parent).role


def bare_name(name: str) -> str:
    """``name`` without the wrapper prefixes of :data:`PREFIXES` (``_orig_mod.``, ``module.``, FSDP1's)."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def _parse_overrides(roles: Mapping[str, RoleSpec] | None) -> dict[str, tuple[str, Any]]:
    out: dict[str, tuple[str, Any]] = {}
    for pattern, spec in (roles or {}).items():
        if isinstance(spec, str):
            out[pattern] = (check_role(spec), None)
        elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
            if spec[0] != "qkv":
                raise ValueError(f"roles[{pattern!r}]: only role 'qkv' takes blocks, got {spec[0]!r}")
            if not isinstance(spec[1], Mapping):
                raise ValueError(f"roles[{pattern!r}]: the blocks must be a dict like {{'sizes': (128, 32, 32), "
                                 f"'axis': 0}}, got {spec[1]!r}")
            out[pattern] = ("qkv", dict(spec[1]))
        else:
            raise ValueError(f"roles[{pattern!r}] must be a role or ('qkv', {{'sizes': ..., 'axis': ...}}), "
                             f"got {spec!r}")
    return out


def _closest(pattern: str, names: list[str], n: int = 3) -> list[str]:
    ranked = sorted(names, key=lambda name: -difflib.SequenceMatcher(None, pattern, name).ratio())
    return ranked[:n]


@dataclass(frozen=True)
class Tagged:
    """One parameter of a model with its qualified name, role, ``qkv`` blocks and the rule that chose them."""

    name: str
    param: torch.Tensor
    role: str
    blocks: dict[str, Any] | None
    rule: str


_REPORTED: WeakTensorKeyDictionary = WeakTensorKeyDictionary()  # tensors whose unknown layout was reported


def _report_unknown(unknown: list[tuple[str, torch.Tensor, str]]) -> None:
    """One warning per pattern of tensors whose fused layout cannot be told, each tensor reported once."""
    by_pattern: dict[str, list[tuple[str, torch.Tensor, str]]] = {}
    for name, param, why in unknown:
        if param in _REPORTED:
            continue
        _REPORTED[param] = True
        parts = name.split(".")
        pattern = "*." + ".".join(parts[-2:]) if len(parts) > 2 else name
        by_pattern.setdefault(pattern, []).append((name, param, why))
    for pattern, members in by_pattern.items():
        name, param, why = members[0]
        more = f" and {len(members) - 1} more like it" if len(members) > 1 else ""
        warnings.warn(
            f"specopt: cannot tell the q/k/v blocks of {name!r} ({why}){more}: regularized as one "
            f"{'×'.join(map(str, param.shape))} matrix. Say so with roles={{{pattern!r}: 'matrix'}}, or state its "
            f"blocks with roles={{{pattern!r}: ('qkv', {{'sizes': (...), 'axis': 0}})}}",
            stacklevel=4,
        )


def tag(model: nn.Module, roles: Mapping[str, RoleSpec] | None = None) -> list[Tagged]:
    """Every parameter of ``model`` (shared tensors once) with its role, blocks and rule; see :func:`named_roles`."""
    overrides = _parse_overrides(roles)
    matched: set[str] = set()
    modules = dict(model.named_modules())
    seen: set[int] = set()
    out: list[Tagged] = []
    unknown: list[tuple[str, torch.Tensor, str]] = []
    for module_name, module in modules.items():
        parent = modules.get(module_name.rpartition(".")[0]) if module_name else None
        for local, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{module_name}.{local}" if module_name else local
            bare = bare_name(name)
            hits = [p for p in overrides if fnmatch.fnmatchcase(bare, p) or fnmatch.fnmatchcase(name, p)]
            matched.update(hits)
            inferred = infer(module, local, param, module_name=bare_name(module_name), parent=parent)
            if not hits:
                if inferred.unknown is not None:
                    unknown.append((name, param, inferred.unknown))
                out.append(Tagged(name, param, inferred.role, inferred.blocks, inferred.rule))
                continue
            role, spec = overrides[hits[0]]
            role = resolve_role(role, param)
            blocks = None
            if role == "qkv":
                spec = spec if spec is not None else inferred.blocks  # plain "qkv": the layout the model declares
                blocks = L.to_spec(L.check_spec(spec, param, repr(name)))
            out.append(Tagged(name, param, role, blocks, f"override {hits[0]!r}"))
    missing = [p for p in overrides if p not in matched]
    if missing:
        names = [bare_name(t.name) for t in out]
        raise ValueError(f"roles pattern {missing[0]!r} matches no parameter; closest names: "
                         f"{', '.join(map(repr, _closest(missing[0], names)))}")
    _report_unknown(unknown)
    return out


def named_roles(model: nn.Module, roles: Mapping[str, RoleSpec] | None = None) -> list[tuple[str, torch.Tensor, str]]:
    r"""``(qualified name, parameter, role)`` for every parameter of ``model`` (shared tensors once: a tied
    ``lm_head`` is listed under its embedding's name).

    ``roles`` maps glob patterns on qualified names to roles and overrides the inferred role, e.g.
    ``{"head.*": "none", "*.pos_embedding": "none"}``; the first matching pattern wins. Patterns are matched
    against the name without wrapper prefixes (:data:`PREFIXES`: ``torch.compile``'s ``_orig_mod.``, DDP/FSDP's
    ``module.``) as well as the full name, so a pattern written for the bare module applies to its wrapper. A
    fused layout is stated as ``("qkv", {"sizes": (128, 32, 32), "axis": 0})`` (``axis`` 1: column blocks; without
    ``sizes``: three equal blocks); plain ``"qkv"`` takes the layout the model declares, else three equal row
    blocks. One-line ``ValueError``\ s: a pattern that matches no parameter (naming the closest names), an unknown
    role, blocks that do not fit the tensor. A fused projection whose layout cannot be told (see :func:`infer`) is
    a matrix and is reported by one ``UserWarning`` per pattern, naming the override that settles it.
    """
    return [(t.name, t.param, t.role) for t in tag(model, roles)]


def param_groups(
    model: nn.Module,
    strength: float | None = None,
    k: float | None = None,
    roles: Mapping[str, RoleSpec] | None = None,
    split_roles: bool = False,
    head: float | None = None,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Parameter groups of ``model`` tagged with their spectral-regularization roles.

    By default returns a single group with ``params``, ``param_names`` and ``roles`` (one role per parameter), and
    ``blocks`` (one entry per parameter: the layout of a ``qkv`` tensor, else ``None``) when it has a ``qkv``
    tensor: one group keeps the base optimizer's per-group overhead as low as plain ``model.parameters()``. With
    ``split_roles=True`` returns one group per non-empty role (order matrix, qkv, bias, scale, none), each with a
    ``role`` key, so that strength, k, lr, ... can differ per role. ``strength`` and ``k`` (when given) become the
    groups' ``spectral_strength`` and ``k``; any other keyword (``lr``, ``weight_decay``, ...) is copied into every
    group. ``roles``: see :func:`named_roles`.

    ``head``: a strength of its own for the output layer (:func:`output_layer`: the last module, in registration
    order, that holds a matrix — a classifier's logits, a critic's value head), its weight and bias put in a last
    group with ``spectral_strength=head``; ``head=0`` exempts it from the pull, so the network's other layers keep
    σ1 near 1 while the output layer grows to the scale the loss needs. Pass the result to any optimizer::

        opt = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)
        opt = specopt.Spectral(torch.optim.SGD(specopt.param_groups(model), lr=0.1))
    """
    tagged = tag(model, roles)
    if not tagged:
        raise ValueError("the model has no parameters")
    extra: dict[str, Any] = dict(group_options)
    if strength is not None:
        extra["spectral_strength"] = strength
    if k is not None:
        extra["k"] = k

    def group(members: list[Tagged], **keys: Any) -> dict[str, Any]:
        out = {"params": [t.param for t in members], "param_names": [t.name for t in members], **keys}
        if any(t.role == "qkv" for t in members):
            out["blocks"] = [t.blocks for t in members]
        return {**out, **extra}

    last: list[Tagged] = []
    if head is not None:
        prefix = output_layer(model)
        ids = {id(p) for p in model.get_submodule(prefix).parameters(recurse=False)}  # a tied head's too
        last = [t for t in tagged if id(t.param) in ids]
        tagged = [t for t in tagged if id(t.param) not in ids]
        if not tagged:
            raise ValueError(f"head= needs a model with layers besides its output layer {prefix!r}")
    if not split_roles:
        out = [group(tagged, roles=[t.role for t in tagged])]
    else:
        out = [group(members, role=role) for role in ROLES if (members := [t for t in tagged if t.role == role])]
    if last:
        out.append({**group(last, roles=[t.role for t in last]), "spectral_strength": head})
    return out


def output_layer(model: nn.Module) -> str:
    """The qualified name of ``model``'s output layer as :func:`param_groups`' ``head=`` takes it: the last module, in
    registration order, that holds a parameter of two or more dimensions itself — a classifier's last Linear, a
    critic's value head, a ViT's ``head``, a language model's ``lm_head`` (also when its weight is tied to the input
    embedding, as GPT-2's is: the tied tensor is then the head's). One-line ``ValueError`` when there is none."""
    last = None
    for name, module in model.named_modules():
        if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            last = name
    if last is None:
        raise ValueError("head= needs a model with a matrix (a Linear or conv weight); this one has none")
    return last


def group_roles(group: Mapping[str, Any], default: str = AUTO) -> list[str]:
    """The concrete role of every parameter of ``group`` (its ``roles`` list, else its ``role`` or ``default``).

    Raises a one-line ``ValueError`` for an unknown role or a ``qkv`` role on a tensor that does not split into
    its blocks (``group["blocks"]``; default three equal row blocks), naming it by the group's ``param_names``.
    """
    return roles_and_layouts(group, default)[0]


def roles_and_layouts(group: Mapping[str, Any], default: str = AUTO) -> tuple[list[str], list[L.Layout | None]]:
    """:func:`group_roles` and, for every ``qkv`` tensor, its ``(sizes, axis)`` (``None`` for the other roles)."""
    params = group["params"]
    roles = group.get("roles")
    if roles is not None:
        if len(roles) != len(params):
            raise ValueError(f"a group's 'roles' has {len(roles)} entries for {len(params)} parameters")
        concrete = [resolve_role(check_role(r), p) for r, p in zip(roles, params)]
    else:
        role = check_role(group.get("role", default))
        concrete = [resolve_role(role, p) for p in params]
    if "qkv" not in concrete:
        return concrete, [None] * len(params)
    return concrete, group_layouts(group, concrete)


def group_layouts(group: Mapping[str, Any], concrete: list[str] | None = None) -> list[L.Layout | None]:
    """The ``(sizes, axis)`` of every ``qkv`` tensor of ``group`` (``None`` for the other roles), validated."""
    params = group["params"]
    concrete = concrete if concrete is not None else group_roles(group)
    specs = group.get("blocks")
    if specs is not None and len(specs) != len(params):
        raise ValueError(f"a group's 'blocks' has {len(specs)} entries for {len(params)} parameters")
    names = group.get("param_names")
    out: list[L.Layout | None] = []
    for j, (p, r) in enumerate(zip(params, concrete)):
        if r != "qkv":
            out.append(None)
            continue
        name = repr(names[j]) if names else f"parameter {j} of its group"
        out.append(L.check_spec(specs[j] if specs is not None else None, p, name))
    return out
