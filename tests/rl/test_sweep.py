"""``python -m rl sweep``: an rl grid split over processes (groups of seeds) by the engine the continual sweeps use,
locally and on a real local Ray; each agent learns as it does in one process; a rerun skips what is finished."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rl.cli import main
from specopt.experiment import folder_kind, read_csv

from .conftest import TINY

FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k not in ("progress", "threads")]
GRID = ["--mitigator", "none", "spectral", "--strengths", "0.5", "--seeds", "0", "1", "--steps", "100",
        "--env-workers", "0", *FLAGS]


def metrics(folder: Path) -> dict[str, list[dict[str, str]]]:
    """Every agent's metrics rows under ``folder`` (a run or a sweep), by agent folder name."""
    return {p.parent.name: read_csv(p) for p in sorted(folder.rglob("results.csv"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rl") / "train"
    assert main(["train", *GRID, "--no-progress", "--out", str(out)]) == 0
    return out


def test_local_sweep_splits_seeds_over_processes_with_every_agent_of_the_grid(one_process, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *GRID, "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 processes of 4 agents" in printed and "| cheetah-run |" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["seeds-0", "seeds-1"]
    assert sorted(p.name for p in (out / "seeds-0").iterdir() if p.is_dir()) == ["none-seed0", "spectral-s0.5-seed0"]
    split, whole = metrics(out), metrics(one_process)
    assert split.keys() == whole.keys() and len(split) == 4
    for agent, rows in whole.items():  # the same evaluations (the returns differ: another batch of agents rounds
        assert [r["step"] for r in split[agent]] == [r["step"] for r in rows]  # differently, and RL amplifies it)
        assert {r["mitigator"] for r in split[agent]} == {r["mitigator"] for r in rows}
    report = json.loads((out / "report.json").read_text())  # the report of every group, as `rl report` writes it
    assert sorted(e["label"] for e in report["entries"]) == ["none buffer 1k RR1", "spectral λ=0.5 buffer 1k RR1"]
    assert all(e["seeds"] == 2 for e in report["entries"]) and (out / "returns.png").stat().st_size > 0
    assert (out / "report.md").read_text().startswith("| env | mitigator |")
    assert folder_kind(out) == "rl sweep" and folder_kind(out / "seeds-0") == "rl run"
    capsys.readouterr()
    assert main(["report", str(out / "seeds-0"), str(out / "seeds-1")]) == 0  # any runs: the same table and versions
    assert capsys.readouterr().out.startswith((out / "report.md").read_text().split("\n\nEach curve")[0])
    assert main(["sweep", *GRID, "--workers", "2", "--out", str(out)]) == 0
    assert "2 finished, 0 to run" in capsys.readouterr().out
    assert main(["train", *GRID, "--out", str(out)]) == 2  # a sweep's folder is not an rl run's
    assert "holds another kind of run (rl sweep" in capsys.readouterr().err


def test_ray_sweep_gives_the_local_rows(one_process, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    out = tmp_path / "ray"
    assert main(["sweep", *GRID, "--seeds-per-process", "2", "--backend", "ray", "--workers", "1",
                 "--out", str(out)]) == 0
    assert [p.name for p in out.iterdir() if p.is_dir()] == ["seeds-0-1"]
    split, whole = metrics(out), metrics(one_process)
    assert {a: [r["eval_return_mean"] for r in rows] for a, rows in split.items()} == \
        {a: [r["eval_return_mean"] for r in rows] for a, rows in whole.items()}  # one process: the same agents
    for config in [out / "seeds-0-1" / "config.json", *(out / "seeds-0-1").glob("*/config.json")]:
        saved = json.loads(config.read_text())  # the run's folder here, as train writes it, not the worker's
        assert saved["out"] == str(out / "seeds-0-1"), config


def test_bad_sweep_settings_are_one_line(tmp_path, capsys):
    assert main(["sweep", *GRID, "--seeds-per-process", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--seeds-per-process must be >= 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
    assert os.path.exists(tmp_path)


def test_declared_strength_study_is_the_committed_runs():
    """rl.studies' strength-sac is what docs/strength.md's commands ran: every process's folder holds a run with the
    same settings, and every agent is finished (so `python -m rl study strength-sac` runs nothing)."""
    from rl.studies import check_settings, configs
    from rl.sweep import status

    root = Path(__file__).resolve().parents[2] / "results"
    cfgs = configs("strength-sac", root)
    assert len(cfgs) == 6 and sum(len(c.agents) for c in cfgs) == 2 * (9 + 4 + 5)
    for cfg in cfgs:
        check_settings(cfg)
        assert status(cfg) == "finished"


def test_a_study_runs_its_processes_then_resumes_nothing_and_refuses_other_settings(tmp_path, capsys, monkeypatch):
    import rl.studies as studies

    monkeypatch.setattr(studies, "DROP_IN", {k: v for k, v in TINY.items() if k != "progress"})
    monkeypatch.setitem(studies.STUDIES, "tiny", ("tiny", [
        ("a", dict(mitigators=("none", "spectral"), strengths=(0.5,), spectral_precondition=True, seeds=(0,),
                   steps=100, env_workers=0))]))
    args = ["study", "tiny", "--out", str(tmp_path), "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1 to run" in out and "| cheetah-run | precondition | 0.5 | 1 |" in out and "| cheetah-run | Adam |" in out
    assert main(args) == 0 and "1 finished, 0 to run" in capsys.readouterr().out
    monkeypatch.setitem(studies.STUDIES, "tiny", ("tiny", [
        ("a", dict(mitigators=("none", "spectral"), strengths=(0.5,), seeds=(0,), steps=100, env_workers=0))]))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings (spectral_precondition)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name, processes, agents, state", [("short-cheetah", 2, 5, "finished"),
                                                             ("rr16-gpu", 1, 10, "partial")])
def test_declared_short_and_gpu_studies_are_the_committed_runs(name, processes, agents, state):
    """The short CPU comparison and the GPU call's RR16 run are declared studies: each process's folder holds a run
    with exactly the declared settings (the short runs finished; the GPU run stopped at 15k of its 100k env steps,
    so the study would resume it)."""
    from rl.studies import check_settings, configs
    from rl.sweep import status

    cfgs = configs(name, Path(__file__).resolve().parents[2] / "results")
    assert len(cfgs) == processes and sum(len(c.agents) for c in cfgs) == agents
    for cfg in cfgs:
        check_settings(cfg)  # every setting but those a resume may change (steps, device, threads, ...): those here
        saved = json.loads((Path(cfg.out) / "config.json").read_text())
        assert (cfg.steps, cfg.device, cfg.threads) == (saved["steps"], saved["device"], saved["threads"])
        assert status(cfg) == state
