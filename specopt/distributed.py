r"""The spectral step on sharded parameters (DTensors: FSDP2's ``fully_shard``, tensor parallelism).

A DTensor parameter is regularized exactly as the full tensor would be, from its local shard and small all-reduces
of vectors — W is never gathered. View W (out × in·kh·kw) as its local block :math:`W_{rc}`: rows are split over
the mesh dimensions whose placement is ``Shard(0)``, columns over those with ``Shard(d ≥ 1)`` (any trailing dim
of a conv kernel is a subset of the reshaped columns). One power iteration is

.. math::
    t = \sum_r W_{rc}^\top u_r \;\text{(all-reduce over row shards)},\quad
    \lVert t\rVert^2 = \sum_c \lVert t_c\rVert^2 \;\text{(over column shards)},\quad v_c = t_c/\lVert t\rVert\\
    s_r = \sum_c W_{rc} v_c \;\text{(over column shards)},\quad
    \hat\sigma^2 = \sum_r \lVert s_r\rVert^2 \;\text{(over row shards)},\quad u_r = s_r/\hat\sigma

so every rank ends with the σ̂ of the full matrix and its own slices of u and v: :mod:`specopt.kernel`'s power
iteration with its mat-vecs split into partial sums (vectors are normalised or kept by the same
:func:`~specopt.kernel.unit_or_previous`), and the same step size :func:`~specopt.kernel.matrix_step`. A ``qkv`` weight is row blocks
(three equal ones, or the sizes of its group's ``blocks`` entry, e.g. grouped-query attention's h·d, h_kv·d,
h_kv·d); a row-sharded one may split a block between ranks, so the sums above run per block (each local row knows
its block from its global row index). Column blocks (``axis`` 1, GPT-2's ``Conv1D``) are the row blocks of Wᵀ:
the same code runs on the transposed DTensor view (``Shard(0)`` ↔ ``Shard(1)``), whose local tensor shares W's
storage, and stores u, v of Wᵀ. The collectives of one step are batched: one
all-reduce per phase and mesh dimension for all tensors that share a sharding. ``spectral_u`` (rows) and
``spectral_v`` (blocks × the weight's trailing dims) are stored as DTensors sharded like the weight's rows and
columns, so ``torch.distributed.checkpoint`` saves and reshards them like the rest of the optimizer state;
``spectral_sigma`` is a replicated plain tensor. Biases need ‖b‖² summed over shards; scales are element-wise and
need nothing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from . import functional as F
from . import kernel as K


def _groups(p: DTensor, rows: bool) -> list[Any]:
    """Process groups of the mesh dimensions that shard the rows (``rows``) or the columns of ``p``."""
    out = []
    for dim, placement in enumerate(p.placements):
        if placement.is_partial():
            raise ValueError("spectral regularization needs parameters that are sharded or replicated, not Partial")
        if placement.is_shard() and (placement.dim == 0) == rows:
            out.append(p.device_mesh.get_group(dim))
    return out


def _sum(tensors: list[Tensor], groups: list[Any]) -> list[Tensor]:
    """All-reduce (sum) a list of tensors over each group with one collective per group."""
    if not groups:
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    for group in groups:
        dist.all_reduce(flat, group=group)
    return [piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def _placements(p: DTensor, of: str) -> list[Any]:
    """Placements of ``spectral_u`` (``of="u"``: sharded where the rows are) or ``spectral_v`` (the columns)."""
    out = []
    for placement in p.placements:
        if placement.is_shard() and of == "u":
            out.append(Shard(0) if placement.dim == 0 else Replicate())
        elif placement.is_shard():
            out.append(Shard(placement.dim) if placement.dim >= 1 else Replicate())
        else:
            out.append(Replicate())
    return out


class _Matrix:
    """One sharded matrix-role parameter: its local block, block ids of its local rows, and local u, v."""

    def __init__(self, param: DTensor, sizes: tuple[int, ...], state: dict, transpose: bool = False) -> None:
        blocks = len(sizes)
        p = param.t() if transpose else param  # column blocks of W are the row blocks of Wᵀ (a view: Shard(d) swaps)
        self.param, self.view, self.blocks = param, p, blocks
        local = p.to_local()
        self.w = local.reshape(local.shape[0], -1).float()
        rows = p.shape[0]
        cols = torch.Size(p.shape[1:]).numel()
        u_place, v_place = _placements(p, "u"), _placements(p, "v")
        row_ids = distribute_tensor(torch.arange(rows, device=local.device), p.device_mesh, u_place,
                                    src_data_rank=None).to_local()
        ends = torch.tensor(sizes, device=local.device).cumsum(0)
        self.block_ids = torch.bucketize(row_ids, ends, right=True)  # block j holds rows [end_{j−1}, end_j)
        st = state.get(param) or {}
        self.warm = "spectral_u" in st
        if self.warm:
            self.u = st["spectral_u"].to_local()
            self.v = st["spectral_v"].to_local().reshape(blocks, -1)
        else:
            us, vs = K.initial_blocks([(size, cols) for size in sizes], local.device)
            u_full, v_full = torch.cat(us), torch.stack(vs).reshape(blocks, *p.shape[1:])
            self.u = distribute_tensor(u_full, p.device_mesh, u_place, src_data_rank=None).to_local()
            self.v = distribute_tensor(v_full, p.device_mesh, v_place, src_data_rank=None).to_local()
            self.v = self.v.reshape(blocks, -1)
        self.row_groups, self.col_groups = _groups(p, rows=True), _groups(p, rows=False)
        self.u_place, self.v_place = u_place, v_place

    def key(self) -> tuple:
        return (tuple(id(g) for g in self.row_groups), tuple(id(g) for g in self.col_groups))

    def left(self) -> Tensor:
        """Partial Wᵀu per block, (b, n_local): rows of block j contribute to row j."""
        m = torch.zeros(self.blocks, self.w.shape[0], device=self.w.device)
        m[self.block_ids, torch.arange(self.w.shape[0], device=self.w.device)] = self.u
        return m @ self.w

    def right(self, v: Tensor) -> Tensor:
        """Partial W v of each local row with its block's v, (m_local,)."""
        s = self.w @ v.t()  # (m_local, b)
        return s.gather(1, self.block_ids.unsqueeze(1)).squeeze(1)

    def segment_sum(self, x: Tensor) -> Tensor:
        return torch.zeros(self.blocks, device=x.device).index_add_(0, self.block_ids, x)


def _iterate(mats: list[_Matrix], iterations: int) -> list[Tensor]:
    """Power iterations on matrices that share a sharding; returns σ̂ (b,) of each."""
    rows, cols = mats[0].row_groups, mats[0].col_groups
    sigmas = [torch.zeros(m.blocks, device=m.w.device) for m in mats]
    for _ in range(iterations):
        ts = _sum([m.left() for m in mats], rows)
        nvs = [n.sqrt() for n in _sum([t.pow(2).sum(-1) for t in ts], cols)]
        v_news = [K.unit_or_previous(t, nv.unsqueeze(-1), m.v)[0] for m, t, nv in zip(mats, ts, nvs)]
        ss = _sum([m.right(v) for m, v in zip(mats, v_news)], cols)
        norms = [n.sqrt() for n in _sum([m.segment_sum(s.pow(2)) for m, s in zip(mats, ss)], rows)]
        for i, (m, s, sigma, v_new) in enumerate(zip(mats, ss, norms, v_news)):
            m.u, _ = K.unit_or_previous(s, sigma[m.block_ids], m.u)  # each row by its block's σ̂
            ok = torch.isfinite(sigma) & (sigma > K._TINY)
            m.v = torch.where(ok.unsqueeze(-1), v_new, m.v)
            sigmas[i] = torch.where(ok, sigma, torch.zeros_like(sigma))
    return sigmas


def prepare_sharded(entries: list[tuple], state: dict, pending: F.Pending) -> None:
    """:func:`specopt.functional.prepare` for DTensor parameters; adds their work to ``pending``."""
    batches: dict[tuple, list[tuple[_Matrix, tuple]]] = {}
    for entry in entries:
        p, role, strength, k, iterations, init_iterations, group, layout = entry
        if role in F.BLOCKS:
            sizes, axis = layout if layout is not None else ((p.shape[0],), 0)
            m = _Matrix(p, sizes, state, transpose=axis == 1)
            n = iterations if m.warm else max(iterations, init_iterations)
            batches.setdefault((m.key(), n), []).append((m, entry))
            continue
        local = p.to_local().float()
        if role == "scale":
            pending.vectors.append(([p], [local - 1.0], torch.full((1,), 2.0, device=local.device), role, strength,
                                    group))
            continue
        x = local.clone() if p.dtype == torch.float32 else local
        norm2 = _sum([x.pow(2).sum().reshape(1)], _groups(p, rows=True))[0]
        pending.vectors.append(([p], [x], (2.0 * k) * norm2.pow(k - 1), role, strength, group))
    for (_, iterations), members in batches.items():
        sigmas = _iterate([m for m, _ in members], iterations)
        for (m, entry), sigma in zip(members, sigmas):
            p, _, strength, k, _, _, group, _ = entry
            pending.blocked.append((p, m, m.v, sigma, strength, k, group))


@torch.no_grad()
def apply_sharded(p: DTensor, m: _Matrix, v: Tensor, sigma: Tensor, alpha: Tensor, state: dict) -> None:
    """W ← W − α_j u vⱼᵀ on the local block (row i in block j), and store u, v as DTensors (of Wᵀ's rows and
    columns for column blocks: the view ``m.view`` shares W's storage)."""
    p = m.view
    local = p.to_local()
    update = (m.u * -alpha[m.block_ids]).unsqueeze(1) * v[m.block_ids]  # (m_local, n_local)
    local.add_(update.reshape(local.shape).to(local.dtype))
    v_shape = (m.blocks, *p.shape[1:])
    v_local = v.reshape(m.blocks, *local.shape[1:])
    st = state[m.param]
    st["spectral_u"] = DTensor.from_local(m.u, p.device_mesh, m.u_place, shape=(p.shape[0],),
                                          stride=(1,), run_check=False)
    st["spectral_v"] = DTensor.from_local(v_local, p.device_mesh, m.v_place, shape=v_shape,
                                          stride=torch.empty(v_shape, device="meta").stride(), run_check=False)
    st["spectral_sigma"] = sigma if m.blocks > 1 else sigma.reshape(())
