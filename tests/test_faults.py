"""Fault injection for the run lifecycle: one run per folder, one process per folder, damaged files, bad values.

Each case is reproduced at tiny size through the command lines (digits for continual, a few hundred DMC steps for
rl) and checked for its outcome: the exit status, a single line on stderr with no traceback, and every file of the
folder byte for byte where nothing may change (or no folder at all where a refused run must write nothing).
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "disable")

from continual.cli import main as continual_main  # noqa: E402
from rl.cli import main as rl_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--dataset", "digits", "--train-size", "64", "--width", "16", "--tasks", "2", "--epochs", "1",
       "--mitigator", "none", "--no-progress"]
SWEEP = ["sweep", "--dataset", "digits", "--train-size", "64", "--width", "16", "--tasks", "1", "--epochs", "1",
         "--mitigator", "none", "--workers", "1", "--no-progress"]
RL = ["train", "--env", "cheetah-run", "--action-repeat", "8", "--warmup-steps", "50", "--replay-ratio", "1",
      "--buffer-size", "1000", "--eval-interval", "100", "--eval-episodes", "1", "--checkpoint-interval", "250",
      "--hidden", "32", "--batch-size", "32", "--diagnostic-batch", "64", "--threads", "1", "--no-progress",
      "--env-workers", "0"]


def folder_state(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def continual_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("continual") / "run"
    assert continual_main(RUN + ["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def rl_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "run"
    assert rl_main(RL + ["--steps", "250", "--out", str(out)]) == 0
    return out


def copy(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out)
    return out


# --- a run folder belongs to one run ------------------------------------------------------------------------------
def test_continual_run_into_an_rl_run_is_refused_and_changes_nothing(rl_run, tmp_path, capsys):
    out = copy(rl_run, tmp_path)
    before = folder_state(out)
    line = refused(capsys, continual_main(RUN + ["--out", str(out)]))
    assert "another kind of run (rl run" in line
    assert refused(capsys, continual_main(RUN + ["--out", str(out), "--resume"]))
    assert folder_state(out) == before


def test_rl_train_into_a_continual_run_is_refused_and_changes_nothing(continual_run, tmp_path, capsys):
    out = copy(continual_run, tmp_path)
    before = folder_state(out)
    assert "another kind of run (continual run" in refused(capsys, rl_main(RL + ["--steps", "250", "--out", str(out)]))
    assert folder_state(out) == before


def test_sweep_into_a_run_and_run_into_a_sweep_are_refused(continual_run, tmp_path, capsys):
    run = copy(continual_run, tmp_path)
    before = folder_state(run)
    assert "(continual run; this is a continual sweep)" in refused(capsys, continual_main(SWEEP + ["--out", str(run)]))
    assert folder_state(run) == before
    sweep = tmp_path / "sweep"
    assert continual_main(SWEEP + ["--out", str(sweep)]) == 0
    capsys.readouterr()
    before = folder_state(sweep)
    assert "(continual sweep; this is a continual run)" in refused(capsys, continual_main(RUN + ["--out", str(sweep)]))
    assert folder_state(sweep) == before


# --- one process per folder: a lock that dies with its process ----------------------------------------------------
def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the folder's lock, as a running run does; returns once it holds it."""
    code = ("import sys, time; from pathlib import Path; from specopt.experiment import FolderLock; "
            "lock = FolderLock(Path(sys.argv[1])).__enter__(); print('held', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_folder_in_use_is_refused_for_runs_resumes_sweeps_and_rl_then_free_after_a_kill_9(continual_run, rl_run,
                                                                                           tmp_path, capsys):
    run, rl = copy(continual_run, tmp_path / "c"), copy(rl_run, tmp_path / "r")
    empty = tmp_path / "empty"
    empty.mkdir()
    holders = [hold_lock(folder) for folder in (run, rl, empty)]
    try:
        before = folder_state(run), folder_state(rl)
        assert "another process is writing into" in refused(capsys, continual_main(RUN + ["--out", str(run),
                                                                                          "--resume"]))
        assert "another process" in refused(capsys, continual_main(RUN + ["--out", str(empty)]))
        assert "another process" in refused(capsys, continual_main(SWEEP + ["--out", str(empty)]))
        assert "another process" in refused(capsys, rl_main(RL + ["--out", str(rl), "--resume", "--steps", "375"]))
        assert (folder_state(run), folder_state(rl)) == before
        assert list(empty.iterdir()) == []
    finally:
        for proc in holders:
            proc.kill()  # kill -9: no clean-up runs, the kernel drops the lock with the process
            proc.wait()
    assert continual_main(RUN + ["--out", str(run), "--resume"]) == 0


def test_two_continual_runs_started_together_on_one_out_one_is_refused(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "continual", *RUN, "--tasks", "3", "--out", str(out)]
    procs = [subprocess.Popen(cmd + ["--mitigator", m], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for m in ("none", "spectral")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    err = next(e for c, e in results if c == 2)  # the folder was locked, or already held the other's results
    assert len(err.strip().splitlines()) == 1 and ("another process" in err or "already holds results" in err), err
    rows = list(csv.DictReader(open(out / "results.csv")))
    config = (out / "config.json").read_text()
    mitigators = {r["mitigator"] for r in rows}
    assert len(mitigators) == 1 and f'"{mitigators.pop()}"' in config  # rows and config.json of the same run


# --- every file a run reads is checked ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["deleted", "emptied", "truncated", "garbage"])
def test_rl_resume_with_a_damaged_metrics_file_is_refused(rl_run, tmp_path, capsys, damage):
    out = copy(rl_run, tmp_path)
    metrics = out / "none-seed0" / "results.csv"
    data = metrics.read_bytes()
    if damage == "deleted":
        metrics.unlink()
    else:
        metrics.write_bytes({"emptied": b"", "truncated": data[: len(data) * 2 // 3], "garbage": b"\x00junk\n1,2\n"}
                            [damage])
    before = folder_state(out)
    line = refused(capsys, rl_main(RL + ["--out", str(out), "--resume", "--steps", "375"]))
    assert str(metrics) in line and "restore it" in line
    assert folder_state(out) == before


def test_rl_resume_below_the_checkpoint_is_refused_and_keeps_config_json(rl_run, tmp_path, capsys):
    out = copy(rl_run, tmp_path)
    before = folder_state(out)
    assert "below the checkpoint's step 250" in refused(capsys, rl_main(RL + ["--out", str(out), "--resume",
                                                                               "--steps", "100"]))
    assert folder_state(out) == before


def test_a_garbage_results_csv_of_a_finished_run_is_rebuilt_from_the_checkpoint(continual_run, tmp_path):
    out = copy(continual_run, tmp_path)
    good = (out / "results.csv").read_bytes()
    (out / "results.csv").write_bytes(b"\x00\x01 not csv")
    assert continual_main(RUN + ["--out", str(out), "--resume"]) == 0
    assert (out / "results.csv").read_bytes() == good
    assert continual_main(["plot", str(out), "-o", str(tmp_path / "fig.png")]) == 0


def test_resuming_a_finished_run_writes_nothing(tmp_path):
    out = tmp_path / "run"
    assert continual_main(RUN + ["--out", str(out)]) == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    time.sleep(0.01)
    assert continual_main(RUN + ["--out", str(out), "--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


# --- one line for every mistake, and nothing written --------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--strength", "nan"], "--strength must be a finite number"),
    (["--strength", "inf"], "--strength must be a finite number"),
    (["--device", "foo"], "is not a torch device"),
    (["--mitigator", "shrink-perturb", "--shrink-perturb.noise-scale", "inf"], "noise_scale must be a finite number"),
    (["--spectral.k", "inf"], "k must be a finite number"),
    (["--cbp.decay", "nan"], "decay must lie in [0, 1)"),
])
def test_continual_bad_values_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    assert message in refused(capsys, continual_main(RUN + ["--out", str(out)] + flags))
    assert not out.exists()


def test_rl_out_empty_or_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    assert "is a file" in refused(capsys, rl_main(RL + ["--steps", "250", "--out", "afile"]))
    assert (tmp_path / "afile").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_continual_out_empty_or_a_file_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out is empty" in refused(capsys, continual_main(RUN + ["--out", ""]))
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "afile").write_text("mine")
    assert "is a file" in refused(capsys, continual_main(RUN + ["--out", "afile"]))
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("flags,message", [
    (["--strength", "nan"], "must be a finite number"),
    (["--strength", "inf"], "must be a finite number"),
    (["--l2-strength", "nan"], "--l2-strength must be a finite number"),
    (["--target-entropy-scale", "nan"], "--target-entropy-scale must be a finite number"),
    (["--log-std-min", "5", "--log-std-max", "-5"], "must be below --log-std-max"),
    (["--device", "foo"], "is not a torch device"),
    (["--lr", "nan"], None),  # not an rl flag: argparse's one line
])
def test_rl_bad_values_are_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    line = refused(capsys, rl_main(RL + ["--steps", "250", "--out", str(out)] + flags)) if message else None
    if message is None:
        with pytest.raises(SystemExit) as exit_:
            rl_main(RL + ["--steps", "250", "--out", str(out)] + flags)
        assert exit_.value.code == 2
    else:
        assert message in line
    assert not out.exists()


# --- workers die with their driver, and survive their own crashes --------------------------------------------------
def children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # the field after the state is the parent's pid
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc (Linux)")
def test_local_sweep_workers_exit_when_the_driver_is_killed_9(tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "continual", *SWEEP[:-3], "--tasks", "500", "--seeds", "0", "1", "--workers", "2",
           "--no-progress", "--out", str(out)]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list(out.glob("*/results.csv"))) < 2:  # both workers are inside a run
            assert time.time() < deadline and driver.poll() is None, "the sweep's runs did not start"
            time.sleep(0.2)
        workers = children(driver.pid)
        assert len(workers) >= 2
    finally:
        driver.kill()  # kill -9: the driver runs no clean-up of its own
        driver.wait()
    deadline = time.time() + 15
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), "pool workers outlived their driver"


def _crash_always(config, files, threads=1):
    os._exit(1)  # as if the worker process were killed mid-run


@pytest.fixture
def local_ray(monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_a_ray_task_whose_worker_dies_is_retried_and_its_run_finishes(local_ray, tmp_path, monkeypatch, capsys):
    import continual.sweep as sweep_mod

    marker, real = str(tmp_path / "crashed-once"), sweep_mod.run_in_temp_folder

    def crash_once(config, files, threads=1):  # pickled by value: the Ray worker runs this very function
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return real(config, files, threads)

    monkeypatch.setattr(sweep_mod, "run_in_temp_folder", crash_once)
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert continual_main(SWEEP + ["--out", str(local)]) == 0
    assert continual_main(SWEEP + ["--backend", "ray", "--out", str(remote)]) == 0
    assert os.path.exists(marker)  # its first worker did die
    assert (remote / "none-seed0" / "results.csv").read_text() == (local / "none-seed0" / "results.csv").read_text()


def test_a_ray_run_whose_worker_keeps_dying_ends_in_one_line_naming_it(local_ray, tmp_path, monkeypatch, capsys):
    import continual.sweep as sweep_mod

    monkeypatch.setattr(sweep_mod, "run_in_temp_folder", _crash_always)
    monkeypatch.setattr(sweep_mod, "RAY_RETRIES", 1)
    code = continual_main(SWEEP + ["--backend", "ray", "--out", str(tmp_path / "ray")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "none-seed0: its Ray worker died 2 times" in err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc (Linux)")
def test_an_rl_env_worker_killed_mid_run_is_one_line(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rl", *RL[:-2], "--env-workers", "2", "--mitigator", "none", "spectral",
           "--steps", "100000", "--out", str(out)]
    driver = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "none-seed0" / "results.csv").exists():  # the workers are stepping the environments
            assert time.time() < deadline and driver.poll() is None, driver.stderr.read() if driver.poll() else ""
            time.sleep(0.2)
        workers = [pid for pid in children(driver.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2
        os.kill(workers[0], 9)
        code = driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
    err = driver.stderr.read()
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert f"pid {workers[0]}" in lines[0] and "--resume" in lines[0]


def test_a_corrupt_rl_checkpoint_is_one_line_and_changes_nothing(rl_run, tmp_path, capsys):
    out = copy(rl_run, tmp_path)
    ckpt = out / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = folder_state(out)
    line = refused(capsys, rl_main(RL + ["--out", str(out), "--resume", "--steps", "375"]))
    assert str(ckpt) in line and "corrupt or truncated" in line
    assert folder_state(out) == before


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    import errno

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(os, "replace", no_space)
    out = tmp_path / "run"
    line = refused(capsys, continual_main(RUN + ["--out", str(out)]))
    assert "No space left on device" in line and str(out / "config.json") in line
    assert not out.exists()  # no half-written or temporary file: the folder it made is removed again


def test_plot_and_sweep_on_a_garbage_results_csv(continual_run, tmp_path, capsys):
    run = copy(continual_run, tmp_path / "run")
    (run / "results.csv").write_bytes(b"\x00\x01 not csv")
    line = refused(capsys, continual_main(["plot", str(run), "-o", str(tmp_path / "fig.png")]))
    assert str(run / "results.csv") in line and "damaged" in line and "--resume" in line
    sweep = tmp_path / "sweep"
    assert continual_main(SWEEP + ["--out", str(sweep)]) == 0
    good = (sweep / "none-seed0" / "results.csv").read_bytes()
    (sweep / "none-seed0" / "results.csv").write_bytes(b"garbage\n1,2,3\n")
    assert continual_main(SWEEP + ["--out", str(sweep)]) == 0  # the run resumes, which rebuilds its rows
    assert (sweep / "none-seed0" / "results.csv").read_bytes() == good


def test_a_truncated_gz_idx_file_in_data_dir_is_one_line_and_writes_nothing(tmp_path, capsys):
    import gzip

    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    images = np.zeros((4, 28, 28), dtype=np.uint8)
    idx = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in images.shape) + images.tobytes()
    packed = gzip.compress(idx)
    (data / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])  # a cut-off download
    labels = bytes([0, 0, 8, 1]) + (4).to_bytes(4, "big") + bytes(4)
    (data / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    out = tmp_path / "run"
    line = refused(capsys, continual_main(["run", "--dataset", "fashion-mnist", "--data-dir", str(data), "--tasks",
                                           "1", "--epochs", "1", "--no-progress", "--out", str(out)]))
    assert "train-images-idx3-ubyte.gz is truncated or not a gzip file" in line
    assert not out.exists()
