"""The studies script at tiny size: one sweep per mitigator and LayerNorm variant, each resumable and summarised."""

import csv
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tuned_study_writes_one_resumable_sweep_per_mitigator_and_variant(tmp_path):
    env = dict(os.environ, STUDY_OUT=str(tmp_path), STUDY_ONLY="spectral l2", STUDY_STRENGTHS="0.5",
               STUDY_EXTRA="--dataset digits --tasks 2 --epochs 1 --train-size 64 --width 16 --no-diagnostics",
               PYTHONPATH=str(ROOT))
    cmd = ["bash", str(ROOT / "scripts" / "continual_studies.sh"), "tuned", "1"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    for variant in ("noln", "ln"):
        for mitigator in ("spectral", "l2"):
            folder = tmp_path / "tuned" / variant / mitigator
            assert (folder / "summary.md").exists() and (folder / "sensitivity.png").exists()
            runs = sorted(p.name for p in folder.iterdir() if p.is_dir())
            assert runs == [f"{mitigator}-s0.5-seed0", f"{mitigator}-s0.5-seed1"]
            with open(folder / runs[0] / "results.csv") as fh:
                rows = list(csv.DictReader(fh))
            assert [r["task"] for r in rows] == ["1", "2"]
            assert {r["layernorm"] for r in rows} == {"1" if variant == "ln" else "0"}
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0 and again.stdout.count("0 to start") == 4, again.stdout[-2000:]
    report = subprocess.run(["python", str(ROOT / "scripts" / "study_report.py"), str(tmp_path / "tuned" / "noln"),
                             "-o", str(tmp_path / "noln.png")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 0 and (tmp_path / "noln.png").exists(), report.stderr[-2000:]
    table = [line.split(" | ") for line in report.stdout.splitlines() if line.startswith("| spectral") or
             line.startswith("| l2")]
    assert [(cells[0], cells[1], cells[2]) for cells in table] == [("| spectral", "0.5", "2"), ("| l2", "0.5", "2")]
    assert all(cells[4].startswith("**") for cells in table)  # each one's only strength is its best
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "continual_studies.sh"), "nope"], env=env,
                         capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "valid: tuned" in bad.stderr


def test_k_study_runs_spectral_once_per_exponent(tmp_path):
    env = dict(os.environ, STUDY_OUT=str(tmp_path), STUDY_KS="1 4",
               STUDY_EXTRA="--dataset digits --tasks 2 --epochs 1 --train-size 64 --width 16 --no-diagnostics "
                           "--seeds 0", PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "continual_studies.sh"), "k", "1"], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for k in (1, 4):
        [run] = [p for p in (tmp_path / "k" / f"k{k}").iterdir() if p.is_dir()]
        with open(run / "results.csv") as fh:
            assert {r["options"] for r in csv.DictReader(fh)} == {f"k={k}"}


def test_shift_study_runs_none_spectral_and_the_named_baselines_per_nonstationarity(tmp_path):
    env = dict(os.environ, STUDY_OUT=str(tmp_path), STUDY_SHIFTS="label-flip", STUDY_BASELINES="l2-init:1e-5",
               STUDY_EXTRA="--dataset digits --tasks 2 --epochs 1 --train-size 64 --width 16 --no-diagnostics "
                           "--seeds 0", PYTHONPATH=str(ROOT))
    cmd = ["bash", str(ROOT / "scripts" / "continual_studies.sh"), "shift", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen, expected, test5 = set(), {}, {}
    for results in (tmp_path / "shift" / "label-flip").glob("*/*/results.csv"):
        with open(results) as fh:
            rows = list(csv.DictReader(fh))
        assert {r["nonstationarity"] for r in rows} == {"label-flip"} and all(r["test_accuracy"] for r in rows)
        seen |= {(r["mitigator"], r["strength"]) for r in rows}
        train, test = ([float(r[m]) for r in rows] for m in ("train_accuracy", "test_accuracy"))
        # one seed, two tasks: first = task 1, last = task 2 (no standard error), last 5 = the mean of both
        expected[rows[0]["mitigator"]] = [f"{train[0]:.3f}", f"{train[1]:.3f}", f"{sum(train) / 2:.3f}",
                                          f"{test[0]:.3f}", f"{test[1]:.3f}", f"{sum(test) / 2:.3f}"]
        test5[rows[0]["mitigator"]] = sum(test) / 2
    assert {m for m, _ in seen} == {"none", "spectral", "l2-init"} and ("l2-init", "1e-05") in seen
    report = subprocess.run(["python", str(ROOT / "scripts" / "study_report.py"),
                             str(tmp_path / "shift" / "label-flip"), "--train-test"],
                            env=env, capture_output=True, text=True, cwd=ROOT)
    assert report.returncode == 0, report.stderr[-2000:]
    table = {cells[0].split(" (")[0]: [c.strip("*") for c in cells[2:]] for cells in
             (line.strip("| ").split(" | ") for line in report.stdout.splitlines()[2:] if line.startswith("| "))}
    assert table == expected
    bold = {line.split(" | ")[0].strip("| ").split(" (")[0] for line in report.stdout.splitlines()[2:]
            if line.endswith("** |")}
    assert bold == {m for m, v in test5.items() if v == max(test5.values())}  # the best test mean (ties: each)
    missing = subprocess.run(cmd, env={k: v for k, v in env.items() if k != "STUDY_BASELINES"},
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode != 0 and "STUDY_BASELINES" in missing.stderr


def test_confirm_study_runs_each_mitigator_at_the_best_strength_its_tuned_summary_names(tmp_path):
    for mitigator, best in (("l2", "* l2: 0.001"), ("none", "* (no mitigator with a strength in this sweep)")):
        folder = tmp_path / "tuned" / "noln" / mitigator
        folder.mkdir(parents=True)
        (folder / "summary.md").write_text(f"# Sweep summary\n\nBest strength per mitigator: ...\n\n{best}\n")
    env = dict(os.environ, STUDY_OUT=str(tmp_path), STUDY_VARIANTS="noln", STUDY_ONLY="none l2 ewc",
               STUDY_EXTRA="--dataset digits --tasks 2 --epochs 1 --train-size 64 --width 16 --no-diagnostics "
                           "--seeds 0", PYTHONPATH=str(ROOT))
    done = subprocess.run(["bash", str(ROOT / "scripts" / "continual_studies.sh"), "confirm", "1"], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipping noln/ewc" in done.stderr  # no tuned summary for it
    assert "noln/none: its best strength is its default: the acceptance runs" in done.stderr  # reused, not rerun
    runs = sorted(str(p.relative_to(tmp_path / "confirm")) for p in (tmp_path / "confirm").glob("*/*/*-seed0"))
    assert runs == ["noln/l2/l2-s0.001-seed0"]
    with open(tmp_path / "confirm" / "noln" / "l2" / "l2-s0.001-seed0" / "results.csv") as fh:
        assert {(r["strength"], r["task"]) for r in csv.DictReader(fh)} == {("0.001", "1"), ("0.001", "2")}
