r"""Block layouts of fused projections: which slices of one stored tensor are separate matrices.

A fused attention projection stores several linear maps in one 2-D tensor. Its layout is the pair
``(sizes, axis)``: the tensor splits along ``axis`` into consecutive blocks of ``sizes[j]`` rows (axis 0) or
columns (axis 1), each its own matrix with its own σ1:

.. math::
    W = [W_1; \dots; W_b] \ (\text{axis } 0),\qquad W = [W_1, \dots, W_b] \ (\text{axis } 1),\qquad
    R(W) = \sum_j (\sigma_1(W_j)^k - 1)^2

* ``nn.MultiheadAttention.in_proj_weight`` (3E × E): rows (E, E, E), read from the module's ``embed_dim``.
* timm's ``Attention.qkv`` / torchvision Swin's ``qkv`` (``nn.Linear``, 3·h·d × E): rows (h·d, h·d, h·d).
* Phi-3's ``qkv_proj`` with grouped-query attention: rows (h·d, h_kv·d, h_kv·d), with the head counts and head
  dim the attention module itself declares (``num_heads``/``config.num_attention_heads``,
  ``num_key_value_heads``, ``head_dim``).
* HF GPT-2's ``c_attn``: a ``transformers.pytorch_utils.Conv1D`` whose weight is stored *in × out* (E × 3E), so
  q, k and v are the column blocks (E, E, E) along axis 1 (``split_size`` of the attention module).
* GPT-BigCode's ``c_attn`` (an ``nn.Linear``) with multi-query attention: rows (E, kv_dim, kv_dim); without
  multi-query its rows are interleaved per head, so it is reported, not split.

In a parameter group the layout of parameter j is ``group["blocks"][j]``: ``None`` (no layout: the default of the
``qkv`` role, three equal row blocks) or a plain dict ``{"sizes": (s_1, ..., s_b), "axis": a}`` — a dict of ints, so
optimizer ``state_dict``\ s stay loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Layout = tuple[tuple[int, ...], int]
"""``(sizes, axis)`` of a fused tensor: consecutive blocks of ``sizes[j]`` rows (axis 0) or columns (axis 1)."""

FUSED_LINEAR_NAMES = ("qkv", "qkv_proj", "Wqkv")
"""Local module names (case-sensitive) of fused q/k/v ``nn.Linear`` layers laid out as [W_q; W_k; W_v]."""

UNKNOWN_LINEAR_NAMES = ("query_key_value",)
"""Local module names of fused q/k/v layers whose rows are *not* [W_q; W_k; W_v] blocks (GPT-NeoX, BLOOM and
Falcon interleave q, k and v per head or per group): reported, and regularized as one matrix."""


@dataclass(frozen=True)
class Detected:
    """What the module tree says about a possibly fused tensor: its layout, or why it cannot be told."""

    layout: Layout | None
    rule: str
    unknown: str | None = None  # why the layout cannot be determined (then ``layout`` is None)


def to_spec(layout: Layout) -> dict[str, Any]:
    """The group entry of ``layout``: ``{"sizes": (...), "axis": a}``."""
    return {"sizes": tuple(int(s) for s in layout[0]), "axis": int(layout[1])}


def default_layout(param: torch.Tensor, name: str) -> Layout:
    """Three equal row blocks [W_q; W_k; W_v], the ``qkv`` role's default; one-line ``ValueError`` if impossible."""
    if param.ndim != 2 or param.shape[0] % 3:
        shape = "×".join(map(str, param.shape)) or "scalar"
        raise ValueError(
            f"role 'qkv' needs a 2-D weight whose rows split into three equal blocks (first dim divisible by 3); "
            f"{name} has shape {shape}: give it role 'matrix', or state its blocks: ('qkv', {{'sizes': (...), "
            f"'axis': 0 or 1}})"
        )
    rows = param.shape[0] // 3
    return (rows, rows, rows), 0


def check_spec(spec: Any, param: torch.Tensor, name: str) -> Layout:
    r"""The layout stated by ``spec`` (``None``, a dict with ``sizes`` and/or ``axis``, or a ``(sizes, axis)`` pair)
    for ``param``, validated with one-line ``ValueError``\ s. Without ``sizes`` the blocks are three equal ones."""
    if spec is None:
        return default_layout(param, name)
    if isinstance(spec, tuple) and len(spec) == 2 and not isinstance(spec[1], (tuple, list)):
        spec = {"sizes": spec[0], "axis": spec[1]}
    if not isinstance(spec, Mapping) or not set(spec) <= {"sizes", "axis"}:
        raise ValueError(f"the blocks of {name} must be a dict with keys 'sizes' and/or 'axis', got {spec!r}")
    axis = spec.get("axis", 0)
    if axis not in (0, 1) or isinstance(axis, bool):
        raise ValueError(f"the blocks axis of {name} must be 0 (rows) or 1 (columns), got {axis!r}")
    if param.ndim != 2:
        shape = "×".join(map(str, param.shape)) or "scalar"
        raise ValueError(f"role 'qkv' needs a 2-D weight; {name} has shape {shape}: give it role 'matrix'")
    length = param.shape[axis]
    sizes = spec.get("sizes")
    if sizes is None:
        if length % 3:
            raise ValueError(f"{name} has {length} {'rows' if axis == 0 else 'columns'}, not divisible into 3 equal "
                             f"blocks: state 'sizes'")
        sizes = (length // 3,) * 3
    if (not isinstance(sizes, (tuple, list)) or len(sizes) < 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes)):
        raise ValueError(f"the block sizes of {name} must be two or more positive integers, got {sizes!r}")
    if sum(sizes) != length:
        raise ValueError(f"the block sizes {tuple(sizes)} of {name} add up to {sum(sizes)}, but it has {length} "
                         f"{'rows' if axis == 0 else 'columns'} (shape {'×'.join(map(str, param.shape))})")
    return tuple(int(s) for s in sizes), int(axis)


def is_default(layout: Layout) -> bool:
    """Whether ``layout`` is three equal row blocks (the batched fast path and the historical state format)."""
    sizes, axis = layout
    return axis == 0 and len(sizes) == 3 and len(set(sizes)) == 1


def _int_attr(obj: Any, names: tuple[str, ...]) -> int | None:
    for source in (obj, getattr(obj, "config", None)):
        for key in names:
            value = getattr(source, key, None) if source is not None else None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_KV_HEADS = ("num_key_value_heads", "num_kv_heads", "kv_n_heads", "n_kv_heads", "multi_query_group_num")


def _fused_linear(param: torch.Tensor, parent: nn.Module | None) -> Detected:
    """Layout of a fused ``qkv``/``qkv_proj``/``Wqkv`` Linear (out × in) from the attention module that owns it."""
    out = param.shape[0]
    owner = type(parent).__name__ if parent is not None else "its parent"
    if parent is not None and hasattr(parent, "mp_num"):  # CodeGen: mp_num chunks of [q; v; k]
        return Detected(None, "", f"{owner} stores {getattr(parent, 'mp_num')} chunks of [q; v; k], not [q; k; v]")
    heads = _int_attr(parent, _HEADS) if parent is not None else None
    kv_heads = _int_attr(parent, _KV_HEADS) if parent is not None else None
    if heads is None or kv_heads is None or kv_heads == heads:  # no grouped-query attention declared: equal thirds
        if out % 3:
            why = f"{owner} declares {heads} heads" if heads else f"{owner} declares no head counts"
            return Detected(None, "", f"{out} rows are not three equal blocks and {why}")
        return Detected(((out // 3,) * 3, 0), f"[q; k; v] rows{f', {heads} heads' if heads else ''}")
    head_dim = _int_attr(parent, ("head_dim",))
    if head_dim is None and out % (heads + 2 * kv_heads) == 0:
        head_dim = out // (heads + 2 * kv_heads)
    if head_dim is None or (heads + 2 * kv_heads) * head_dim != out:
        return Detected(None, "", f"{owner} declares {heads} heads, {kv_heads} kv heads (head_dim {head_dim}), "
                                  f"which does not add up to {out} rows")
    q, kv = heads * head_dim, kv_heads * head_dim
    return Detected(((q, kv, kv), 0), f"[q; k; v] rows, {heads} q / {kv_heads} kv heads × {head_dim}")


def _bigcode(param: torch.Tensor, parent: nn.Module | None) -> Detected:
    """GPT-BigCode's ``c_attn`` Linear: rows [q; k; v] = (embed_dim, kv_dim, kv_dim) with multi-query attention;
    without it the rows are interleaved per head (heads × [q_h; k_h; v_h]), not three blocks."""
    embed, kv = (_int_attr(parent, (key,)) if parent is not None else None for key in ("embed_dim", "kv_dim"))
    if getattr(parent, "multi_query", False) is True and embed and kv and embed + 2 * kv == param.shape[0]:
        return Detected(((embed, kv, kv), 0), f"[q; k; v] rows, multi-query: {embed} / {kv} / {kv}")
    owner = type(parent).__name__ if parent is not None else "its parent"
    return Detected(None, "", f"a c_attn Linear whose layout {owner} does not declare as [q; k; v] blocks "
                              f"(GPT-BigCode without multi_query interleaves q, k and v per head)")


def is_hf_conv1d(module: nn.Module) -> bool:
    """HF transformers' ``Conv1D`` (GPT-2 family): a linear layer whose weight is stored in × out (``nx`` × ``nf``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def detect(module: nn.Module, name: str, param: torch.Tensor, module_name: str,
           parent: nn.Module | None) -> Detected | None:
    """The fused layout of parameter ``name`` of ``module`` (``None``: not a fused projection)."""
    if param.ndim != 2:
        return None
    local_module = module_name.rpartition(".")[2]
    if isinstance(module, nn.MultiheadAttention):
        if name != "in_proj_weight":
            return None
        e = module.embed_dim
        if param.shape[0] != 3 * e:
            return Detected(None, "", f"in_proj_weight has {param.shape[0]} rows, not 3 × embed_dim {e}")
        return Detected(((e, e, e), 0), "MultiheadAttention in_proj: [q; k; v] rows")
    if name != "weight":
        return None
    if is_hf_conv1d(module) and local_module == "c_attn":
        split = _int_attr(parent, ("split_size", "embed_dim")) if parent is not None else None
        cols = param.shape[1]
        if split is None or cols % split or cols // split < 2:
            return Detected(None, "", f"its columns ({cols}) are not two or more blocks of its attention's "
                                      f"split_size ({split})")
        blocks = cols // split
        what = {3: "q, k, v", 2: "k, v"}.get(blocks, f"{blocks} blocks")  # GPT-2 cross-attention: [k, v]
        return Detected(((split,) * blocks, 1), f"HF Conv1D c_attn (in × out): {what} along the columns")
    if isinstance(module, nn.Linear) and local_module in FUSED_LINEAR_NAMES:
        return _fused_linear(param, parent)
    if isinstance(module, nn.Linear) and local_module == "c_attn":  # GPT-BigCode's fused Linear
        return _bigcode(param, parent)
    if isinstance(module, nn.Linear) and local_module in UNKNOWN_LINEAR_NAMES:
        return Detected(None, "", f"{local_module}: GPT-NeoX, BLOOM and Falcon interleave q, k and v per head")
    return None
