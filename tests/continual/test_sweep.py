"""``python -m continual sweep``: run folders, report.md/.json, sensitivity.png, skipping and resuming, and the Ray backend
against a real local Ray instance."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from continual import learner as learner_mod  # the learners make their tasks (continual.learner.Run.train)
from continual import sweep as sweep_mod
from continual.cli import config_from, main, parser
from continual.runner import run_experiment
from specopt.experiment import folder_kind

TINY = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--train-size", "64", "--batch-size", "32",
        "--width", "16", "--no-diagnostics"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()}


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n) if n > 1 else 0.0)


def test_local_sweep_writes_run_folders_summary_and_figure_and_a_rerun_skips_everything(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", *TINY, "--mitigator", "none", "l2", "--strengths", "1e-4", "1e-2", "--seeds", "0", "1",
            "--workers", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    names = {"none-seed0", "none-seed1", "l2-s0.0001-seed0", "l2-s0.0001-seed1", "l2-s0.01-seed0", "l2-s0.01-seed1"}
    assert {p.name for p in out.iterdir() if p.is_dir()} == names
    assert len(re.findall(r"^\[\d/6\] ", printed, re.M)) == 6  # a progress line per finished run
    for name in names:
        assert {p.name for p in (out / name).iterdir()} == {"results.csv", "config.json", "checkpoint.pt"}
    assert (out / "sensitivity.png").stat().st_size > 0

    # A run folder holds exactly what `run` writes for that mitigator, strength and seed.
    single = tmp_path / "single"
    assert main(["run", *TINY, "--mitigator", "l2", "--strength", "1e-2", "--seeds", "1", "--no-progress",
                 "--out", str(single)]) == 0
    assert read_csv(single / "results.csv") == read_csv(out / "l2-s0.01-seed1" / "results.csv")
    mine, theirs = json.loads((out / "l2-s0.01-seed1" / "config.json").read_text()), \
        json.loads((single / "config.json").read_text())
    assert mine.pop("out") == str(out / "l2-s0.01-seed1") and theirs.pop("out") == str(single)
    assert mine == theirs

    # report.md and report.json: recompute every number from the rows.
    summary = (out / "report.md").read_text()
    data = json.loads((out / "report.json").read_text())
    best = {}
    for mitigator, strength, label in [("none", None, "–"), ("l2", 1e-4, "0.0001"), ("l2", 1e-2, "0.01")]:
        last5, last = [], []
        for seed in (0, 1):
            name = f"{mitigator}-seed{seed}" if strength is None else f"{mitigator}-s{strength:g}-seed{seed}"
            rows = read_csv(out / name / "results.csv")
            assert [int(r["task"]) for r in rows] == [1, 2] and {r["seed"] for r in rows} == {str(seed)}
            acc = [float(r["train_accuracy"]) for r in rows]
            last5.append(sum(acc[-5:]) / len(acc[-5:]))
            last.append(acc[-1])
            if strength is not None:
                assert {float(r["strength"]) for r in rows} == {strength}
        (m5, s5), (m1, s1) = mean_se(last5), mean_se(last)
        (entry,) = [e for e in data["entries"] if e["mitigator"] == mitigator and e["strength"] == strength]
        assert (entry["seeds"], entry["tasks"]) == (2, 2)
        assert entry["last5"] == pytest.approx(m5, abs=1e-12) and entry["last"] == pytest.approx(m1, abs=1e-12)
        assert entry["last5_se"] == pytest.approx(s5, abs=1e-12)
        if strength is not None:
            best[strength] = m5
        else:  # 2 seeds: the mean alone, no standard error
            assert f"| {mitigator} | {label} | 2 | 2 | {m5:.3f} | {m1:.3f} |" in summary, summary
    best_strength = max(sorted(best), key=lambda s: best[s])  # highest; a tie goes to the smaller strength
    assert data["best"] == {"l2": best_strength}
    assert f"| l2 | {best_strength:g} | 2 | 2 | **{best[best_strength]:.3f}** |" in summary, summary
    assert "highest mean (over seeds) of the last-5-task mean train accuracy" in summary
    assert summary.startswith("# digits, ") and "; 2 tasks × 1 epochs, batch size 32" in summary.splitlines()[0]

    # The same command again: nothing reruns, no file of a run is rewritten.
    before = mtimes(out)
    assert main(argv) == 0
    assert "6 finished, 0 to resume, 0 to start" in capsys.readouterr().out
    assert mtimes(out) == before


def test_a_killed_run_is_resumed_not_restarted_and_changed_settings_are_refused(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", *TINY, "--mitigator", "spectral", "--strengths", "1e-3", "--workers", "1", "--out", str(out)]
    (run,) = sweep_mod.plan(config_from(parser().parse_args(argv[:-2] + ["--out", str(out)])), [1e-3])
    assert run.name == "spectral-s0.001-seed0"

    # Kill the run during its second task: a folder with task 1's row and checkpoint.
    real = learner_mod.make_task

    def dying(ds, nonstationarity, seed, t):
        if t == 1:
            raise KeyboardInterrupt
        return real(ds, nonstationarity, seed, t)

    monkeypatch.setattr(learner_mod, "make_task", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(run.config, progress=False)
    monkeypatch.setattr(learner_mod, "make_task", real)
    folder = out / run.name
    assert len(read_csv(folder / "results.csv")) == 1
    # Mark the checkpointed row: a resumed run keeps it, a restarted one would recompute it.
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=False)
    ckpt["rows"][0]["train_loss"] = 99.0
    torch.save(ckpt, folder / "checkpoint.pt")

    assert main(argv) == 0
    assert "0 finished, 1 to resume, 0 to start" in capsys.readouterr().out
    resumed = read_csv(folder / "results.csv")
    uninterrupted = tmp_path / "full"
    run_experiment(replace(run.config, out=str(uninterrupted)), progress=False)
    full = read_csv(uninterrupted / "results.csv")
    assert len(resumed) == 2 and resumed[0]["train_loss"] == "99.0"
    assert resumed[1] == full[1] and {k: v for k, v in resumed[0].items() if k != "train_loss"} == \
        {k: v for k, v in full[0].items() if k != "train_loss"}

    # A changed setting over an existing run folder: one line, exit 2, nothing touched.
    before = mtimes(out)
    assert main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a run with different settings (epochs)" in err
    assert mtimes(out) == before


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's errors
        return int(e.code)


def test_input_errors_are_one_line_with_exit_2(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "x")
    cases = [(["--seeds", "0", "0"], "--seeds repeats"), (["--ray-address", "auto"], "--ray-address needs"),
             (["--strengths", "0"], "must be > 0"), (["--resume"], "unrecognized arguments: --resume")]
    for extra, message in cases:
        code = exit_code(["sweep", *TINY, "--out", out, *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, (extra, err)
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert exit_code(["sweep", *TINY, "--backend", "ray", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "specopt[sweep]"' in err
    assert not Path(out).exists()


def test_ray_backend_gives_the_rows_of_the_local_backend_and_resumes_across_folders(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    common = [*TINY, "--mitigator", "none", "spectral", "--seeds", "0", "1", "--no-progress"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main(["sweep", *common, "--workers", "1", "--out", str(local)]) == 0

    # Half of one run already there (as if a machine died mid-run): the Ray worker gets its files and resumes it.
    runs = sweep_mod.plan(config_from(parser().parse_args(["sweep", *common, "--out", str(remote)])), None)
    (run,) = [r for r in runs if r.name == "spectral-s1-seed1"]  # spectral's default strength is 1
    real = learner_mod.make_task
    monkeypatch.setattr(learner_mod, "make_task",
                        lambda ds, ns, seed, t: (_ for _ in ()).throw(KeyboardInterrupt) if t == 1 else
                        real(ds, ns, seed, t))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(run.config, progress=False)
    monkeypatch.setattr(learner_mod, "make_task", real)
    ckpt = torch.load(Path(run.config.out) / "checkpoint.pt", weights_only=False)
    ckpt["rows"][0]["train_loss"] = 99.0  # the mark of a resumed (not restarted) run
    torch.save(ckpt, Path(run.config.out) / "checkpoint.pt")

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False, configure_logging=False)
    try:
        capsys.readouterr()
        assert main(["sweep", *[a for a in common if a != "--no-progress"], "--backend", "ray", "--out",
                     str(remote)]) == 0
        printed = capsys.readouterr().out
        assert "0 finished, 1 to resume, 3 to start (ray)" in printed and printed.count("/4] ") == 4
    finally:
        ray.shutdown()
    names = sorted(p.name for p in local.iterdir() if p.is_dir())
    assert names == sorted(p.name for p in remote.iterdir() if p.is_dir()) and len(names) == 4
    for name in names:
        mine, theirs = read_csv(remote / name / "results.csv"), read_csv(local / name / "results.csv")
        if name == run.name:
            assert mine[0].pop("train_loss") == "99.0"
            theirs[0].pop("train_loss")
        assert mine == theirs, name
        config = json.loads((remote / name / "config.json").read_text())
        assert config["out"] == str(remote / name)  # not the worker's temporary folder
        assert not [p for p in (remote / name).iterdir() if p.name.startswith(".")]
    assert (remote / "report.json").exists() and (remote / "sensitivity.png").exists()


def test_killing_a_local_sweep_stops_its_workers(tmp_path):
    """SIGTERM to the sweep (`kill`, a scheduler's stop) ends its worker processes too: none is left orphaned."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-m", "continual", "sweep", "--dataset", "digits", "--tasks", "50", "--epochs", "5",
           "--mitigator", "none", "spectral", "--seeds", "0", "--workers", "2", "--no-diagnostics", "--no-progress",
           "--out", str(tmp_path / "sweep")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def children() -> list[int]:
        path = f"/proc/{proc.pid}/task/{proc.pid}/children"
        return [int(p) for p in open(path).read().split()] if os.path.exists(path) else []

    deadline = time.time() + 120
    while not any((tmp_path / "sweep").glob("*/results.csv")) and time.time() < deadline:
        time.sleep(0.5)  # the workers are running: a first task is written
    workers = children()
    assert workers, "no worker processes seen"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    time.sleep(1)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
             open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
    assert not alive, f"workers still running after the sweep was killed: {alive}"


def test_a_run_from_before_a_new_setting_counts_as_that_settings_default():
    """Finished runs whose config.json predates a RunConfig field (e.g. ``options``) are skipped, not refused."""
    from dataclasses import asdict

    from continual.runner import RunConfig, changed_settings

    config = asdict(RunConfig())
    old = {k: v for k, v in config.items() if k != "options"}
    assert changed_settings(old, config) == []
    assert changed_settings(old, {**config, "options": {"spectral": {"k": 4}}}) == ["options"]


def test_pack_folds_finished_runs_into_one_rows_file_and_every_reader_reads_them_alike(tmp_path, monkeypatch,
                                                                                         capsys):
    """``python -m continual pack``: finished run folders become the sweep's rows.csv + runs.jsonl (rows and configs
    byte for byte what the folders held), an unfinished run is left to resume, and the summary, the study table, the
    plot table and the sweep's resume read the packed sweep as they read the folders."""
    from continual.plot import read_rows, table as plot_table
    from continual.report import table
    from specopt.results import packed_runs

    out = tmp_path / "studies" / "sweep"
    argv = ["sweep", *TINY, "--mitigator", "none", "l2", "--strengths", "1e-2", "--seeds", "0", "1",
            "--workers", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    folders = {p.name: (json.loads((p / "config.json").read_text()), read_csv(p / "results.csv"))
               for p in out.iterdir() if p.is_dir()}
    before = (table(out)[0], plot_table(read_rows([out]), "train_accuracy"), (out / "report.md").read_text())
    partial = out / "l2-s0.01-seed1"
    rows = read_csv(partial / "results.csv")
    with open(partial / "results.csv", "w", newline="") as f:  # as if killed after its first task
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerow(rows[0])
    capsys.readouterr()

    assert main(["pack", str(tmp_path / "studies")]) == 0
    assert "3 finished runs packed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["l2-s0.01-seed1", "report.json", "report.md", "rows.csv",
                                                     "runs.jsonl", "sensitivity.png"]
    packed = packed_runs(out)
    assert set(packed) == set(folders) - {"l2-s0.01-seed1"}
    for name, (config, rows) in packed.items():
        assert (config, rows) == folders[name]
    assert main(["pack", str(out)]) == 0 and "0 finished runs packed" in capsys.readouterr().out

    assert main([a for a in argv if a != "--no-progress"]) == 0  # again: the packed runs are finished, one resumes
    assert "3 finished, 1 to resume, 0 to start" in capsys.readouterr().out
    assert read_csv(partial / "results.csv") == folders["l2-s0.01-seed1"][1]
    assert (table(out)[0], plot_table(read_rows([out]), "train_accuracy"), (out / "report.md").read_text()) == before
    assert read_rows([out / "none-seed0"]) == folders["none-seed0"][1]  # a packed run named by its folder
    assert main([*argv[:-1], str(out), "--epochs", "2"]) == 2  # changed settings are refused for packed runs too
    assert "runs.jsonl (" in capsys.readouterr().err

    # A folder holding only a packed sweep is a continual sweep by its runs.jsonl: `run` into it is refused.
    assert main(["pack", str(out)]) == 0 and "1 finished runs packed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == []
    assert folder_kind(out) == "continual sweep"
    assert main(["run", *TINY, "--no-progress", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "continual sweep" in err and len(err.strip().splitlines()) == 1, err
