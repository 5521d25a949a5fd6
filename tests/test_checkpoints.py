"""Run checkpoints hold tensors and plain containers only, and resume never unpickles anything else.

Both experiment packages: every continual mitigator (one seed at a time and vectorized seeds) and rl (agents in one
process and environments in worker processes) write a ``checkpoint.pt`` that ``torch.load(weights_only=True)``
reads; a hostile checkpoint — one whose pickle creates a file when it is loaded without ``weights_only`` — is
refused by ``--resume`` in one line, the file is never created and the run folder is left byte for byte as it was;
a checkpoint from before this change (numpy arrays in rl's environment RandomStates) is refused with the advice to
convert it, and ``convert-checkpoint --trust`` turns it into exactly the plain checkpoint the run writes today.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "disable")

from continual.cli import main as continual_main  # noqa: E402
from continual.runner import RunConfig, run_experiment  # noqa: E402
from rl.cli import main as rl_main  # noqa: E402
from rl.config import Config  # noqa: E402
from rl.train import train  # noqa: E402
from specopt.experiment import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402

from .rl.conftest import TINY  # noqa: E402

CONTINUAL = dict(dataset="digits", train_size=64, width=16, tasks=2, epochs=1, batch_size=32, probe_size=32)


class _CreatesFile:
    """Unpickled (``weights_only=False``), this object opens ``path`` for writing, i.e. creates the file: the kind of
    code a hostile checkpoint runs."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def hostile_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"config": {}, "rows": [], "run": _CreatesFile(marker)}, path)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(captured) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def plain_load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# --- every checkpoint is plain -------------------------------------------------------------------------------------
@pytest.mark.parametrize("mitigators,vectorize", [
    (["none", "spectral", "spectral-coupled", "l2", "l2-init", "shrink-perturb"], False),
    (["redo", "crelu", "wasserstein", "ewc", "cbp"], False),
    (["spectral"], True),
])
def test_continual_checkpoints_load_with_weights_only(tmp_path, mitigators, vectorize):
    out = tmp_path / "run"
    cfg = RunConfig(**CONTINUAL, mitigators=mitigators, seeds=[0, 1], vectorize_seeds=vectorize, out=str(out))
    run_experiment(cfg, progress=False)
    state = plain_load(out / "checkpoint.pt")
    assert len(state["rows"]) == len(mitigators) * 2 * CONTINUAL["tasks"]
    assert state["run"]["next_task"] == CONTINUAL["tasks"]


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    """Two agents, their environments in two worker processes; 250 steps = two 125-step episodes, checkpoint at 250."""
    out = tmp_path_factory.mktemp("rl") / "run"
    torch.set_num_threads(1)
    train(Config(**TINY, out=str(out), steps=250, mitigators=("spectral", "resets"), seeds=(0,), env_workers=2))
    return out


def test_rl_checkpoint_loads_with_weights_only_and_holds_the_env_rng_as_tensors(rl_run):
    state = plain_load(rl_run / "checkpoint.pt")
    assert state["step"] == 250
    assert len(state["env_rng"]) == 4  # two agents' training and evaluation environments
    for name, keys, pos, has_gauss, cached in state["env_rng"]:
        assert name == "MT19937" and keys.dtype == torch.int64 and keys.shape == (624,)
        assert 0 <= int(keys.min()) and int(keys.max()) < 2 ** 32  # exactly numpy's uint32 keys
        assert isinstance(pos, int) and isinstance(has_gauss, int) and isinstance(cached, float)


def test_save_checkpoint_refuses_state_that_is_not_plain(tmp_path):
    with pytest.raises(TypeError, match=r"state\['run'\]\['keys'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "c.pt", {"run": {"keys": np.zeros(3)}})
    assert not (tmp_path / "c.pt").exists()


# --- a hostile checkpoint is refused before any code of it runs ----------------------------------------------------
def test_the_hostile_checkpoint_does_run_code_when_unpickled_in_full(tmp_path):
    """The check that the refusal tests below can fail: loaded without weights_only, the file creates its marker."""
    marker = tmp_path / "marker"
    hostile_checkpoint(tmp_path / "checkpoint.pt", marker)
    torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert marker.exists()


def test_continual_resume_refuses_a_hostile_checkpoint_in_one_line(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "marker"
    flags = ["run", "--dataset", "digits", "--train-size", "64", "--width", "16", "--tasks", "2", "--epochs", "1",
             "--mitigator", "spectral", "--no-progress", "--out", str(out)]
    assert continual_main(flags) == 0
    hostile_checkpoint(out / "checkpoint.pt", marker)
    before = folder_bytes(out)
    capsys.readouterr()
    assert continual_main(flags + ["--resume", "--tasks", "3"]) == 2
    line = one_error_line(capsys.readouterr())
    assert str(out / "checkpoint.pt") in line and "io.open" in line
    assert f"python -m continual convert-checkpoint --trust {out}" in line
    assert not marker.exists()
    assert folder_bytes(out) == before


def test_rl_resume_refuses_a_hostile_checkpoint_in_one_line(rl_run, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(rl_run, out)
    hostile_checkpoint(out / "checkpoint.pt", marker)
    before = folder_bytes(out)
    assert rl_main(["train", "--out", str(out), "--resume", "--steps", "375"]) == 2
    line = one_error_line(capsys.readouterr())
    assert str(out / "checkpoint.pt") in line and "io.open" in line
    assert f"python -m rl convert-checkpoint --trust {out}" in line
    assert not marker.exists()
    assert folder_bytes(out) == before  # config.json not rewritten, results.csv not trimmed


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, capsys, damage):
    out = tmp_path / "run"
    flags = ["run", "--dataset", "digits", "--train-size", "64", "--width", "16", "--tasks", "1", "--epochs", "1",
             "--mitigator", "none", "--no-progress", "--out", str(out)]
    assert continual_main(flags) == 0
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint"}[damage])
    before = folder_bytes(out)
    capsys.readouterr()
    assert continual_main(flags + ["--resume", "--tasks", "2"]) == 2
    line = one_error_line(capsys.readouterr())
    assert str(ckpt) in line and "corrupt or truncated" in line
    assert folder_bytes(out) == before


# --- checkpoints from before: refused with advice, converted only when trusted -------------------------------------
def legacy_rl_checkpoint(path: Path) -> None:
    """The file as rl wrote it before checkpoints were plain: each environment's RandomState as numpy gives it."""
    state = plain_load(path)
    state["env_rng"] = [(n, keys.numpy().astype(np.uint32), pos, g, c) for n, keys, pos, g, c in state["env_rng"]]
    torch.save(state, path)


def assert_equal_states(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_states(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_states(x, y, f"{where}[{i}]")
    else:
        assert a == b or (a != a and b != b), where  # NaN == NaN here


def test_a_legacy_rl_checkpoint_is_refused_then_converted_exactly_when_trusted(rl_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(rl_run, out)
    ckpt = out / "checkpoint.pt"
    legacy_rl_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="numpy"):
        load_checkpoint(ckpt, "the advice")

    assert rl_main(["train", "--out", str(out), "--resume", "--steps", "375"]) == 2
    assert f"python -m rl convert-checkpoint --trust {out}" in one_error_line(capsys.readouterr())

    legacy = ckpt.read_bytes()
    assert rl_main(["convert-checkpoint", str(out)]) == 2  # without --trust: nothing is unpickled or written
    assert "--trust" in one_error_line(capsys.readouterr())
    assert ckpt.read_bytes() == legacy

    assert rl_main(["convert-checkpoint", str(out), "--trust"]) == 0
    assert "converted" in capsys.readouterr().out
    assert (out / "checkpoint.pt.untrusted").read_bytes() == legacy
    assert_equal_states(plain_load(ckpt), plain_load(rl_run / "checkpoint.pt"))

    assert rl_main(["convert-checkpoint", str(out), "--trust"]) == 0
    assert "already plain" in capsys.readouterr().out
    assert rl_main(["train", "--out", str(out), "--resume", "--steps", "375"]) == 0  # and it resumes


def test_continual_convert_checkpoint_of_a_plain_checkpoint_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    run_experiment(RunConfig(**CONTINUAL, mitigators=["none"], out=str(out)), progress=False)
    before = folder_bytes(out)
    assert continual_main(["convert-checkpoint", str(out), "--trust"]) == 0
    assert "already plain" in capsys.readouterr().out
    assert folder_bytes(out) == before
    assert continual_main(["convert-checkpoint", str(tmp_path / "nothing-here"), "--trust"]) == 2
    assert "no checkpoint at" in one_error_line(capsys.readouterr())
