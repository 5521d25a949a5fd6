"""Sharded and replicated training: DDP and FSDP2 (``fully_shard``) on CPU with the gloo backend.

Every test starts two processes that talk over the loopback interface only (``MASTER_ADDR=127.0.0.1``, a free
port taken from a socket bound to 127.0.0.1, ``GLOO_SOCKET_IFNAME=lo`` on Linux). A forkserver (a fresh
interpreter that imports torch's distributed stack once per pytest session) forks the workers; spawning every pair
re-imports that stack, ~5 s per test on a 2-core machine (``START_METHOD = "spawn"`` does that). Workers are
module-level functions; each rank writes its results to ``tmp_path`` with ``torch.save`` and every assertion runs
here, in the pytest process. The reference for a distributed run is one process training the same model (same
seed) on the concatenated batch: DDP and FSDP2 average gradients over the ranks and each rank takes the mean loss
of its half, so both take the same steps up to floating-point reduction order.

Training tests run every model twice: with the first layer's weight scaled ×8 (σ1 ≈ 11 in the MLP, the case that
used to end in NaN) and unscaled. Only the unscaled run is compared with the reference. The ×8 run is not: the
step that lands σ̂ on 1 leaves the warm-started vectors on a direction whose singular value is now 1 while others
are ≈ 10, and which direction the next iteration finds depends on rounding, so a relative perturbation of 1e-7 of
the weights after every step moves that trajectory by up to 1e-2 in 10 steps (by < 1e-6 unscaled). It must stay
finite, agree across ranks and bring the layer's σ1 down. The checkpoint and collective tests use the ×8 model.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import functools
import importlib
import inspect
import multiprocessing
import os
import socket
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import specopt

WORLD = 2
STEPS = 10
PER_RANK = 4  # samples per rank and step; the reference trains on the WORLD * PER_RANK concatenated samples
LR = 1e-2
SCALE = 8.0  # the first layer's weight is multiplied by this before training
SCALES = (SCALE, 1.0)  # training tests: the ×8 run (finite, replicas agree, σ1 falls), the unscaled one (= reference)
KINDS = ("mlp", "conv")
PLACEMENTS = ("shard0", "shard1")
ATOL, RTOL = 1e-5, 1e-4
DEADLINE_S = 90  # one run of both ranks; the process group's own timeout is 45 s
SPECTRAL_KEYS = ("spectral_u", "spectral_v", "spectral_sigma")


# ----------------------------------------------------------------------------------------------------------------
# models, data, optimizers (shared by the workers and the single-process references)


def make_model(kind: str, seed: int = 0, scale: float = SCALE) -> nn.Sequential:
    """Small models; a row count of 7 / 5 (not divisible by the world size) makes FSDP2's shards uneven."""
    torch.manual_seed(seed)
    if kind == "mlp":
        model = nn.Sequential(
            nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 7), nn.ReLU(), nn.Linear(7, 4)
        )
    elif kind == "conv":  # input 2×4×4 → 4×4×4 → 5×2×2 → 4
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 4)
        )
    else:
        raise ValueError(kind)
    with torch.no_grad():
        model[0].weight.mul_(scale)
    return model


def make_batch(kind: str, step: int, rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The full batch of ``step`` (rank ``None``) or rank ``rank``'s contiguous slice of it."""
    g = torch.Generator().manual_seed(10_000 + step)
    n = WORLD * PER_RANK
    x = torch.randn(n, 8, generator=g) if kind == "mlp" else torch.randn(n, 2, 4, 4, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    if rank is None:
        return x, y
    part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return x[part], y[part]


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "adam":
        return specopt.SpectralAdam(specopt.param_groups(model), lr=LR)
    if name == "sgd":
        return specopt.Spectral(torch.optim.SGD(specopt.param_groups(model), lr=LR, momentum=0.9))
    if name == "torch-adam":  # control: no specopt at all
        return torch.optim.Adam(model.parameters(), lr=LR)
    raise ValueError(name)


def train(model: nn.Module, opt: torch.optim.Optimizer, kind: str, steps: int, start: int = 0, rank: int | None = None):
    for t in range(start, start + steps):
        x, y = make_batch(kind, t, rank)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@functools.lru_cache(maxsize=None)
def reference(kind: str, opt_name: str, scale: float) -> dict[str, torch.Tensor]:
    """One process, the full batch every step, ``STEPS`` steps."""
    model = make_model(kind, scale=scale)
    opt = make_optimizer(opt_name, model)
    train(model, opt, kind, STEPS)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def is_matrix(p: torch.Tensor) -> bool:
    return p.ndim >= 2


def case(kind: str, scale: float) -> str:
    return f"{kind}-x{scale:g}"


def sigma1(w: torch.Tensor) -> float:
    """Exact largest singular value of ``w`` as out × (everything else)."""
    return float(torch.linalg.matrix_norm(w.detach().reshape(w.shape[0], -1).double(), ord=2))


# ----------------------------------------------------------------------------------------------------------------
# FSDP2 helpers (run in the workers)


def shard_model(model: nn.Sequential, placement: str) -> nn.Sequential:
    """``fully_shard`` every submodule with parameters, then the root.

    ``shard0``: FSDP2's default Shard(0) (rows). ``shard1``: ``shard_placement_fn`` returns Shard(1) (columns; conv
    kernels: input channels) for every tensor with ≥ 2 dims whose dim 1 divides by the world size (FSDP2 requires
    even shards on a nonzero dim), else the default: the MLP's Linear(7, 4) stays Shard(0), so one model mixes both.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard

    def by_columns(param: nn.Parameter):
        return Shard(1) if param.ndim >= 2 and param.shape[1] % WORLD == 0 else None

    fn = {"shard0": None, "shard1": by_columns}[placement]
    mesh = init_device_mesh("cpu", (WORLD,))
    for module in model:
        if any(True for _ in module.parameters(recurse=False)):
            fully_shard(module, mesh=mesh, shard_placement_fn=fn)
    fully_shard(model, mesh=mesh, shard_placement_fn=fn)
    return model


def full(t):
    """A DTensor's full value (a collective: every rank calls it in the same order), else a copy."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t.detach().clone()


def full_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: full(p) for name, p in model.named_parameters()}


def full_optim_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, p in model.named_parameters():
        out[name] = {key: full(val) for key, val in sorted(opt.state.get(p, {}).items()) if torch.is_tensor(val)}
    return out


def placement_name(pl) -> str:
    """``Shard(0)``, ``Replicate()`` or the placement's repr (torch's ``str`` abbreviates: ``S(0)``, ``R``)."""
    if pl.is_shard():
        return f"Shard({pl.dim})"
    if pl.is_replicate():
        return "Replicate()"
    return repr(pl)


def layout(t) -> dict | None:
    """Picklable description of how a tensor is laid out (``weights_only`` loads it)."""
    from torch.distributed.tensor import DTensor

    if t is None:
        return None
    if isinstance(t, DTensor):
        return {"dtensor": True, "shape": tuple(t.shape), "placements": [placement_name(pl) for pl in t.placements],
                "local_shape": tuple(t.to_local().shape)}
    return {"dtensor": False, "shape": tuple(t.shape), "placements": None, "local_shape": tuple(t.shape)}


_COLLECTIVE_MODULES = (
    "torch.distributed", "torch.distributed.distributed_c10d", "torch.distributed._functional_collectives"
)


@contextlib.contextmanager
def count_collectives():
    """Count collectives issued inside the block, on two independent channels.

    * ``dispatch:<op>``: every c10d / functional-collective op that reaches the dispatcher (``CommDebugMode``): this
      sees FSDP2's all-gathers, DTensor redistributions and plain ``dist.*`` calls whatever Python name was used;
    * ``python:<name>``: calls of every function whose name contains "gather" in ``torch.distributed``,
      ``distributed_c10d`` and ``_functional_collectives`` (``all_gather``, ``all_gather_into_tensor``,
      ``all_gather_single``, ``all_gather_tensor``, ...), wrapped for the duration of the block.
    """
    from torch.distributed.tensor.debug import CommDebugMode

    counts: collections.Counter = collections.Counter()
    patched = []
    for modname in _COLLECTIVE_MODULES:
        mod = importlib.import_module(modname)
        for attr in dir(mod):
            fn = getattr(mod, attr, None)
            if "gather" not in attr.lower() or not (inspect.isfunction(fn) or inspect.isbuiltin(fn)):
                continue

            def counted(*args, __fn=fn, __label=f"python:{attr}", **kwargs):
                counts[__label] += 1
                return __fn(*args, **kwargs)

            patched.append((mod, attr, fn))
            setattr(mod, attr, counted)
    try:
        with CommDebugMode() as mode:
            yield counts
    finally:
        for mod, attr, fn in reversed(patched):
            setattr(mod, attr, fn)
    for op, n in mode.get_comm_counts().items():
        counts[f"dispatch:{op}"] += n


def gathers(counts: dict[str, int], channel: str) -> int:
    return sum(n for label, n in counts.items() if label.startswith(channel + ":") and "gather" in label.lower())


# ----------------------------------------------------------------------------------------------------------------
# spawning


START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
# torch only: before Python 3.13 the forkserver imports these ignoring the parent's sys.path, so specopt and this
# module are imported in each child, after it has taken the parent's sys.path (the checkout under test)
PRELOAD = ["torch", "torch.distributed.fsdp", "torch.distributed.tensor", "torch.distributed.tensor.debug",
           "torch.distributed.checkpoint", "torch.nn.parallel"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bootstrap(rank: int, port: int, out_dir: str, fn, args: tuple) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if sys.platform.startswith("linux") and any(name == "lo" for _, name in socket.if_nameindex()):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo's data connections on loopback too
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*returned a view tensor.*")  # FSDP2 on a Sequential root
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=45))
    try:
        result = fn(rank, Path(out_dir), *args)
        torch.save(result, Path(out_dir) / f"result-rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_workers(tmp_path: Path, fn, *args) -> list:
    """Run ``fn(rank, tmp_path, *args)`` on ``WORLD`` new processes; return each rank's result.

    A worker's exception is re-raised here with its traceback (``ProcessRaisedException``); a hang fails the test
    after ``DEADLINE_S``.
    """
    if START_METHOD == "forkserver":
        multiprocessing.set_forkserver_preload(PRELOAD)  # no effect once the session's forkserver runs
    ctx = mp.start_processes(
        _bootstrap, args=(_free_port(), str(tmp_path), fn, args), nprocs=WORLD, join=False, start_method=START_METHOD
    )
    deadline = time.monotonic() + DEADLINE_S
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for proc in ctx.processes:
                if proc.is_alive():
                    proc.kill()
            pytest.fail(f"{fn.__name__} did not finish within {DEADLINE_S} s")
    return [torch.load(tmp_path / f"result-rank{rank}.pt", weights_only=True) for rank in range(WORLD)]


# ----------------------------------------------------------------------------------------------------------------
# workers


def _ddp_worker(rank: int, out: Path, opt_name: str) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    result = {}
    for kind in KINDS:
        for scale in SCALES:
            model = DDP(make_model(kind, scale=scale))
            opt = make_optimizer(opt_name, model)
            train(model, opt, kind, STEPS, rank=rank)
            params = {name.removeprefix("module."): p.detach().clone() for name, p in model.named_parameters()}
            result[case(kind, scale)] = {"params": params}
    return result


def _fsdp_runs(rank: int, opt_name: str, placement: str) -> dict:
    result = {}
    for kind in KINDS:
        for scale in SCALES:
            model = shard_model(make_model(kind, scale=scale), placement)
            opt = make_optimizer(opt_name, model)
            train(model, opt, kind, STEPS, rank=rank)
            result[case(kind, scale)] = {
                "params": full_params(model),
                "layout": {name: layout(p) for name, p in model.named_parameters()},
            }
    return result


def _fsdp_worker(rank: int, out: Path, opt_name: str, placement: str) -> dict:
    return _fsdp_runs(rank, opt_name, placement)


def _checkpoint_runs(rank: int, out: Path, opt_name: str) -> dict:
    """Uninterrupted 10 steps; 5 steps + ``dcp.save``; a fresh model (other init) + optimizer, ``dcp.load``, 5 more."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    half = STEPS // 2
    result = {}
    for kind in KINDS:
        model = shard_model(make_model(kind), "shard0")
        opt = make_optimizer(opt_name, model)
        train(model, opt, kind, STEPS, rank=rank)
        uninterrupted = full_params(model)

        model = shard_model(make_model(kind), "shard0")
        opt = make_optimizer(opt_name, model)
        train(model, opt, kind, half, rank=rank)
        saved_state = full_optim_state(model, opt)
        model_sd, optim_sd = get_state_dict(model, opt)
        checkpoint = str(out / f"checkpoint-{kind}")
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=checkpoint)
        del model, opt, model_sd, optim_sd

        model = shard_model(make_model(kind, seed=1), "shard0")  # other weights: they must come from the checkpoint
        opt = make_optimizer(opt_name, model)
        model_sd, optim_sd = get_state_dict(model, opt)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=checkpoint)
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        restored_state = full_optim_state(model, opt)
        train(model, opt, kind, STEPS - half, start=half, rank=rank)
        result[kind] = {
            "uninterrupted": uninterrupted,
            "resumed": full_params(model),
            "saved_state": saved_state,
            "restored_state": restored_state,
            "matrices": [name for name, p in model.named_parameters() if is_matrix(p)],
        }
    return result


def _checkpoint_worker(rank: int, out: Path, opt_name: str) -> dict:
    return _checkpoint_runs(rank, out, opt_name)


def _collectives_worker(rank: int, out: Path) -> dict:
    """Collectives counted during ``opt.step()`` only; forward and ``full_tensor()`` are the positive controls."""
    result = {}
    for placement in PLACEMENTS:
        for kind in KINDS:
            model = shard_model(make_model(kind), placement)
            opt = make_optimizer("adam", model)
            counts = {phase: collections.Counter() for phase in ("forward", "step", "full_tensor")}
            for t in range(3):  # the first step starts the vectors, the next ones warm-start them
                x, y = make_batch(kind, t, rank)
                with count_collectives() as c:
                    logits = model(x)
                counts["forward"].update(c)
                loss = nn.functional.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                with count_collectives() as c:
                    opt.step()
                counts["step"].update(c)
            with count_collectives() as c:
                model[0].weight.full_tensor()
            counts["full_tensor"].update(c)
            state = {}
            for name, p in model.named_parameters():
                if is_matrix(p):
                    st = opt.state.get(p, {})
                    state[name] = {"weight": layout(p), "u": layout(st.get("spectral_u")),
                                   "v": layout(st.get("spectral_v"))}
            result[f"{placement}/{kind}"] = {"counts": {k: dict(v) for k, v in counts.items()}, "state": state}
    return result


def _control_worker(rank: int, out: Path) -> dict:
    """torch.optim.Adam without specopt: FSDP2 training (both placements) and the DCP round trip."""
    return {
        "fsdp": {placement: _fsdp_runs(rank, "torch-adam", placement) for placement in PLACEMENTS},
        "checkpoint": _checkpoint_runs(rank, out, "torch-adam"),
    }


GQA_BLOCKS = {"sizes": (32, 8, 8), "axis": 0}  # 48 rows on two ranks: rank 1's 24 rows hold parts of all 3 blocks
COLUMN_BLOCKS = {"sizes": (16, 20, 12), "axis": 1}  # the 4 × 48 output layer as GPT-2's Conv1D c_attn is cut


def make_gqa(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 4))


def gqa_optimizer(model: nn.Module, blocks: dict) -> torch.optim.Optimizer:
    layer = "0.weight" if blocks["axis"] == 0 else "2.weight"
    return specopt.SpectralAdam(specopt.param_groups(model, roles={layer: ("qkv", blocks)}), lr=LR)


def _gqa_worker(rank: int, out: Path) -> dict:
    """Unequal row blocks and unequal column blocks, on rows (Shard(0)) and columns (Shard(1))."""
    result = {}
    for placement in PLACEMENTS:
        for key, blocks in (("rows", GQA_BLOCKS), ("columns", COLUMN_BLOCKS)):
            model = shard_model(make_gqa(), placement)
            opt = gqa_optimizer(model, blocks)
            train(model, opt, "mlp", STEPS, rank=rank)
            fused = model[0].weight if blocks["axis"] == 0 else model[2].weight
            result[f"{placement}/{key}"] = {"params": full_params(model),
                                            "sigma": full(opt.state[fused]["spectral_sigma"]),
                                            "placements": [placement_name(pl) for pl in fused.placements]}
    return result


# ----------------------------------------------------------------------------------------------------------------
# assertions


def assert_finite(t: torch.Tensor, label: str) -> None:
    bad = int((~torch.isfinite(t)).sum())
    assert bad == 0, f"{label}: {bad} of {t.numel()} entries are not finite"


def assert_matches(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str, **tol) -> None:
    assert sorted(got) == sorted(expected), f"{label}: parameter names differ: {sorted(got)} vs {sorted(expected)}"
    for name, want in expected.items():
        assert_finite(want, f"{label}: the single-process reference's {name}")
        assert_finite(got[name], f"{label}: {name} after distributed training")
        torch.testing.assert_close(got[name], want, **(tol or {"atol": ATOL, "rtol": RTOL}),
                                   msg=lambda m, name=name: f"{label}: {name}: {m}")


def check_training(results: list[dict], label: str, opt_name: str) -> None:
    """Every run finite and the same on both ranks; unscaled (and the control, which has no spectral step and is not
    sensitive): equal to the reference; ×8 with a spectral step: the layer's σ1 fell."""
    for kind in KINDS:
        for scale in SCALES:
            where = f"{label} {case(kind, scale)}"
            first, second = (r[case(kind, scale)]["params"] for r in results)
            for name, val in first.items():
                assert_finite(val, f"{where}: {name} after training")
                assert torch.equal(val, second[name]), f"{where}: {name} differs between the ranks"
            if scale == 1.0 or opt_name == "torch-adam":
                assert_matches(first, reference(kind, opt_name, scale), where)
            else:
                for name, val in reference(kind, opt_name, scale).items():
                    assert_finite(val, f"{where}: the single-process reference's {name}")
                before, after = sigma1(make_model(kind, scale=scale)[0].weight), sigma1(first["0.weight"])
                assert after < before, f"{where}: σ1 of the ×{scale:g} layer went from {before:.3f} to {after:.3f}"


def check_fsdp_layout(result: dict, placement: str) -> None:
    """The test covers what it says: everything sharded; Shard(1) weights (mixed with Shard(0)) or all Shard(0)."""
    for kind in KINDS:
        lay = result[case(kind, SCALE)]["layout"]
        assert all(entry["dtensor"] for entry in lay.values()), f"{kind}: FSDP2 left a parameter unsharded"
        placements = {entry["placements"][0] for name, entry in lay.items() if len(entry["shape"]) >= 2}
        if placement == "shard1":
            assert "Shard(1)" in placements, f"{kind}: no weight sharded by columns: {lay}"
            if kind == "mlp":
                assert "Shard(0)" in placements, f"{kind}: expected Linear(7, 4) to stay Shard(0): {lay}"
        else:
            assert placements == {"Shard(0)"}, f"{kind}: {lay}"


def check_checkpoint_result(result: dict, out: Path, opt_name: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    for kind in KINDS:
        r = result[kind]
        saved, restored = r["saved_state"], r["restored_state"]
        # specopt: the power-iteration entries, u sharded like the weight's rows; control: Adam's exp_avg, sharded
        # like the weight (this checks the key names and the chunk count on torch alone)
        keys, sharded = (SPECTRAL_KEYS, "spectral_u") if opt_name != "torch-adam" else (("exp_avg",), "exp_avg")
        metadata = dcp.FileSystemReader(str(out / f"checkpoint-{kind}")).read_metadata().state_dict_metadata
        for name in r["matrices"]:
            missing = [key for key in keys if key not in saved[name]]
            assert not missing, f"{kind}: {name} has no {missing} in the optimizer state after {STEPS // 2} steps"
            for key in keys:
                assert f"optim.state.{name}.{key}" in metadata, (
                    f"{kind}: the checkpoint lacks optim.state.{name}.{key}; it holds {sorted(metadata)}"
                )
            entry = metadata[f"optim.state.{name}.{sharded}"]
            shape = tuple(saved[name][sharded].shape)
            assert isinstance(entry, TensorStorageMetadata) and tuple(entry.size) == shape, (kind, name, shape, entry)
            assert len(entry.chunks) == WORLD, (
                f"{kind}: {name}'s {sharded} is saved in {len(entry.chunks)} chunk(s), not sharded over {WORLD} "
                f"ranks like the weight's rows: {entry.chunks}"
            )
        assert sorted(restored) == sorted(saved), kind
        for name in saved:
            assert sorted(restored[name]) == sorted(saved[name]), (
                f"{kind}: {name}: state keys after loading {sorted(restored[name])}, saved {sorted(saved[name])}"
            )
            for key, val in saved[name].items():
                assert restored[name][key].dtype == val.dtype, f"{kind}: {name}.{key}: dtype changed by the round trip"
                assert torch.equal(restored[name][key], val), f"{kind}: {name}.{key} differs after dcp.load"
        assert_matches(r["resumed"], r["uninterrupted"], f"{opt_name} {kind} resumed vs uninterrupted")


# ----------------------------------------------------------------------------------------------------------------
# tests


def test_harness_control_fsdp2_and_dcp_with_plain_torch_adam(tmp_path):
    """No specopt: shows that spawning, FSDP2 on gloo/CPU (Shard(0), Shard(1), uneven shards) and DCP work here,
    so a failure of the tests below is specopt's."""
    results = run_workers(tmp_path, _control_worker)
    for placement in PLACEMENTS:
        check_fsdp_layout(results[0]["fsdp"][placement], placement)
        check_training([r["fsdp"][placement] for r in results], f"FSDP2 {placement} torch-adam", "torch-adam")
        for kind in KINDS:
            lay = results[0]["fsdp"][placement][case(kind, SCALE)]["layout"]
            other = results[1]["fsdp"][placement][case(kind, SCALE)]["layout"]
            if placement == "shard0":  # 7 (mlp) / 5 (conv) rows: ranks hold 4 and 3 / 3 and 2
                assert any(lay[n]["local_shape"] != other[n]["local_shape"] for n in lay), f"{kind}: shards even"
    check_checkpoint_result(results[0]["checkpoint"], tmp_path, "torch-adam")


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_ddp_replicas_stay_identical_and_match_one_process_on_the_full_batch(tmp_path, opt_name):
    check_training(run_workers(tmp_path, _ddp_worker, opt_name), f"DDP {opt_name}", opt_name)


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
@pytest.mark.parametrize("placement", PLACEMENTS, ids=["rows-Shard0", "columns-Shard1"])
def test_fsdp2_matches_one_process_on_the_full_batch(tmp_path, placement, opt_name):
    results = run_workers(tmp_path, _fsdp_worker, opt_name, placement)
    check_fsdp_layout(results[0], placement)
    check_training(results, f"FSDP2 {placement} {opt_name}", opt_name)


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_fsdp2_power_iteration_state_round_trips_through_distributed_checkpoint(tmp_path, opt_name):
    results = run_workers(tmp_path, _checkpoint_worker, opt_name)
    check_checkpoint_result(results[0], tmp_path, opt_name)


def test_fsdp2_step_never_all_gathers_and_keeps_vectors_sharded(tmp_path):
    results = run_workers(tmp_path, _collectives_worker)
    for rank, result in enumerate(results):
        for key, r in result.items():
            counts = r["counts"]
            for control in ("forward", "full_tensor"):  # the counters do see all-gathers
                for channel in ("dispatch", "python"):
                    assert gathers(counts[control], channel) > 0, (
                        f"rank {rank} {key}: the {channel} counter saw no all-gather in {control}: {counts[control]}"
                    )
            assert gathers(counts["step"], "dispatch") == 0 and gathers(counts["step"], "python") == 0, (
                f"rank {rank} {key}: opt.step() all-gathered: {counts['step']}"
            )
            for name, lay in r["state"].items():
                w, u, v = lay["weight"], lay["u"], lay["v"]
                where = f"rank {rank} {key} {name} (weight {w})"
                assert u is not None and v is not None, f"{where}: no spectral_u/spectral_v in the state"
                assert u["dtensor"] and v["dtensor"], f"{where}: u {u}, v {v} are not DTensors"
                assert u["shape"] == w["shape"][:1], f"{where}: u has shape {u['shape']}"
                # v has the weight's trailing dims, as they are or as one row (1, in, ...): its dim `lead` + j is
                # the weight's dim 1 + j
                trailing = w["shape"][1:]
                assert v["shape"] in (trailing, (1, *trailing)), f"{where}: v has shape {v['shape']}"
                lead = len(v["shape"]) - len(trailing)
                if w["placements"] == ["Shard(0)"]:  # rows sharded: u like the rows, v whole
                    assert u["placements"] == ["Shard(0)"], f"{where}: u {u}"
                    assert u["local_shape"][0] == w["local_shape"][0], f"{where}: u {u}"
                    assert v["placements"] == ["Replicate()"], f"{where}: v {v}"
                else:  # columns sharded: u whole, v like the columns
                    assert w["placements"] == ["Shard(1)"], where
                    assert u["placements"] == ["Replicate()"], f"{where}: u {u}"
                    assert v["placements"] == [f"Shard({lead})"], f"{where}: v {v}"
                    assert v["local_shape"][lead] == w["local_shape"][1], f"{where}: v {v}"


def test_fsdp2_unequal_row_and_column_blocks_match_one_process(tmp_path):
    results = run_workers(tmp_path, _gqa_worker)
    for key, blocks in (("rows", GQA_BLOCKS), ("columns", COLUMN_BLOCKS)):
        model = make_gqa()
        opt = gqa_optimizer(model, blocks)
        train(model, opt, "mlp", STEPS)
        fused = model[0].weight if blocks["axis"] == 0 else model[2].weight
        expected = {name: p.detach().clone() for name, p in model.named_parameters()}
        for placement in PLACEMENTS:
            for rank, result in enumerate(results):
                r = result[f"{placement}/{key}"]
                assert_matches(r["params"], expected, f"FSDP2 {placement} rank {rank} {key} blocks")
                torch.testing.assert_close(r["sigma"], opt.state[fused]["spectral_sigma"], atol=ATOL, rtol=RTOL,
                                           msg=lambda m: f"{placement} rank {rank} {key}: {m}")
                assert r["sigma"].shape == (3,)
            sharded_dim = {"shard0": "Shard(0)", "shard1": "Shard(1)"}[placement]
            assert results[0][f"{placement}/{key}"]["placements"] == [sharded_dim] or key == "rows"

