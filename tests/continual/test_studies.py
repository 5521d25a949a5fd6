"""`python -m continual study`: the studies of docs/results.md as data — declared once, resumable, reported; the
declarations reproduce the committed runs' settings exactly, and a study that depends on another reads its
report.json."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from continual.studies import HELDOUT_SEEDS, configs
from continual.sweep import plan, status
from specopt.results import run_configs

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "studies"
TINY = ["--dataset", "digits", "--tasks", "2", "--epochs", "1", "--train-size", "64", "--width", "16",
        "--no-diagnostics", "--workers", "1", "--no-progress"]


def study(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "continual", "study", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_tuned_study_runs_one_resumable_sweep_per_mitigator_and_variant_then_reports(tmp_path):
    args = ["tuned", "--only", "spectral", "l2", "--strengths", "0.5", "--out", str(tmp_path), *TINY]
    first = study(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    for variant in ("noln", "ln"):
        for mitigator in ("spectral", "l2"):
            folder = tmp_path / "tuned" / variant / mitigator
            runs = sorted(p.name for p in folder.iterdir() if p.is_dir())
            assert runs == [f"{mitigator}-s0.5-seed0", f"{mitigator}-s0.5-seed1"]
            with open(folder / runs[0] / "results.csv") as fh:
                rows = list(csv.DictReader(fh))
            assert [r["task"] for r in rows] == ["1", "2"]
            assert {r["layernorm"] for r in rows} == {"1" if variant == "ln" else "0"}
            summary = json.loads((folder / "report.json").read_text())
            assert summary["best"] == {mitigator: 0.5} and summary["entries"][0]["seeds"] == 2
    report = (tmp_path / "tuned" / "report.md").read_text()
    assert report.count("| spectral | 0.5 | 2 | 2 | **") == 2 and (tmp_path / "tuned" / "ln.png").exists()
    again = study(*[a for a in args if a != "--no-progress"])  # its progress lines say what each sweep had to do
    assert again.returncode == 0 and again.stdout.count("0 to start") == 4, again.stdout[-2000:]
    bad = study("nope")
    assert bad.returncode == 2 and "invalid choice: 'nope'" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.parametrize("name, runs, new", [("tuned", 216, 0), ("confirm", 27, 6), ("k", 12, 0), ("shift", 36, 0)])
def test_declared_studies_are_the_committed_runs_exactly(name, runs, new):
    """Every committed run of a study is a planned run with the same settings (a changed setting would make the sweep
    refuse its folder), so the study command reproduces what the shell recipes ran; the only runs left to do are the
    grid points added since and not run yet (tuned: none, its extensions all ran; confirm: EWC
    at its new tuned best, 1e3, in both variants, whose committed runs at the old bests — 1e-5 without LayerNorm, 1
    with — are left over: history, as results.md says)."""
    planned = [r for cfg, grid in configs(name, RESULTS) for r in plan(cfg, list(grid) if grid else None)]
    states = [status(r) for r in planned]
    assert states.count("finished") == runs and states.count("new") == new and len(states) == runs + new
    committed = {folder for folder, _ in run_configs(RESULTS / name)}  # packed (rows.csv + runs.jsonl) or not
    superseded = {RESULTS / "confirm" / v / "ewc" / f"ewc-s{s}-seed{seed}" for v, s in (("noln", "1e-05"), ("ln", "1"))
                  for seed in (0, 1, 2)}
    assert committed - (superseded if name == "confirm" else set()) == {
        Path(r.config.out) for r, s in zip(planned, states) if s == "finished"}


def test_heldout_study_uses_seeds_no_tuning_run_used_and_the_tuned_best_strengths():
    used = {seed for study in ("tuned", "confirm") for _, config in run_configs(RESULTS / study)
            for seed in config["seeds"]}
    assert used == {0, 1, 2} and not used & set(HELDOUT_SEEDS)
    plans = {Path(cfg.out).relative_to(RESULTS / "heldout").as_posix(): (cfg, strengths)
             for cfg, strengths in configs("heldout", RESULTS)}
    for variant in ("noln", "ln"):
        best = json.loads((RESULTS / "tuned" / variant / "spectral" / "report.json").read_text())["best"]["spectral"]
        cfg, strengths = plans[f"{variant}/spectral"]
        assert best == 1.0 and strengths == (0.3, 1, 3)  # the best and one grid step either side
        assert cfg.seeds == list(HELDOUT_SEEDS) and cfg.tasks == 30 and cfg.layernorm == (variant == "ln")
        for mitigator in ("cbp", "l2-init", "spectral-coupled"):
            tuned = json.loads((RESULTS / "tuned" / variant / mitigator / "report.json").read_text())["best"]
            assert plans[f"{variant}/{mitigator}"][1] == (tuned[mitigator],)
    assert plans["noln/none"][1] is None and len(plans) == 22


def test_confirm_reads_the_tuned_summary_json_and_refuses_without_it(tmp_path):
    for mitigator, best in (("l2", {"l2": 0.001}), ("none", {})):
        folder = tmp_path / "tuned" / "noln" / mitigator
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({"best": best}))
    done = study("confirm", "--variants", "noln", "--only", "none", "l2", "--seeds", "0", "--out", str(tmp_path),
                 *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(str(p.relative_to(tmp_path / "confirm")) for p in (tmp_path / "confirm").glob("*/*/*-seed0"))
    assert runs == ["noln/l2/l2-s0.001-seed0"]  # none: no strength, the acceptance runs are its confirmation
    with open(tmp_path / "confirm" / "noln" / "l2" / "l2-s0.001-seed0" / "results.csv") as fh:
        assert {(r["strength"], r["task"]) for r in csv.DictReader(fh)} == {("0.001", "1"), ("0.001", "2")}
    missing = study("confirm", "--variants", "noln", "--only", "ewc", "--out", str(tmp_path), *TINY)
    assert missing.returncode == 2 and "report.json is missing" in missing.stderr
    assert len(missing.stderr.splitlines()) == 1 and not (tmp_path / "confirm" / "noln" / "ewc").exists()


def test_k_study_runs_spectral_once_per_exponent(tmp_path):
    done = study("k", "--seeds", "0", "--out", str(tmp_path), *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    for k in (1, 2, 4, 8):
        [run] = [p for p in (tmp_path / "k" / f"k{k}").iterdir() if p.is_dir()]
        with open(run / "results.csv") as fh:
            assert {r["options"] for r in csv.DictReader(fh)} == {"" if k == 2 else f"k={k}"}
    report = (tmp_path / "k" / "report.md").read_text()
    assert all(f"## k{k}" in report for k in (1, 2, 4, 8)) and not list((tmp_path / "k").glob("*.png"))


def test_acceptance_study_declares_the_committed_acceptance_runs():
    """The acceptance study plans exactly the (variant, mitigator, strength, seed) runs whose rows results/acceptance
    holds (made by the shell script it replaced, one CSV per mitigator and seed), on the same benchmark."""
    committed = set()
    for variant in ("noln", "ln"):
        for path in (ROOT / "results" / "acceptance" / variant).glob("*.csv"):
            with open(path, newline="") as f:
                for r in csv.DictReader(f):
                    assert (r["dataset"], r["nonstationarity"], r["model"]) == ("fashion-mnist", "random-labels", "mlp")
                    strength = None if r["mitigator"] in ("none", "crelu") else float(r["strength"])
                    committed.add((r["layernorm"] == "1", r["mitigator"], strength, int(r["seed"]), int(r["task"])))
    planned = {(r.config.layernorm, r.mitigator, r.strength, r.seed, task)
               for cfg, grid in configs("acceptance", RESULTS) for r in plan(cfg, list(grid) if grid else None)
               for task in range(1, r.config.tasks + 1)}
    assert planned == committed and len(planned) == 2 * 11 * 3 * 30


def test_acceptance_study_reports_its_criteria(tmp_path):
    done = study("acceptance", "--only", "none", "spectral", "--variants", "noln", "--out", str(tmp_path), *TINY)
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "acceptance" / "report.md").read_text()
    lasts = []
    for seed in (0, 1, 2):
        with open(tmp_path / "acceptance" / "noln" / "none" / f"none-seed{seed}" / "results.csv", newline="") as f:
            lasts.append(f"{[float(r['train_accuracy']) for r in csv.DictReader(f)][-1]:.3f}")
    assert f"| unregularized Adam's last-task train accuracy < 0.2 (3 seeds) | {' / '.join(lasts)} (first task" \
        in report


def test_long_study_plans_the_papers_50_tasks_on_held_out_seeds_at_the_tuned_bests():
    """Issue #29 item 4: none, both forms of spectral and CReLU (the best baseline without LayerNorm), 50 tasks, the
    held-out seeds, each at the best strength the tuned study's report.json names."""
    runs = [r for cfg, grid in configs("long", RESULTS) for r in plan(cfg, list(grid) if grid else None)]
    assert {r.seed for r in runs} == set(HELDOUT_SEEDS) and len(runs) == 4 * len(HELDOUT_SEEDS)
    assert all(r.config.tasks == 50 and not r.config.layernorm and r.config.epochs == 40 for r in runs)
    for r in runs:
        best = json.loads((RESULTS / "tuned" / "noln" / r.mitigator / "report.json").read_text())["best"]
        assert r.strength == best.get(r.mitigator)  # None for none and crelu, which have no strength


@pytest.mark.parametrize("name, sweep_runs, single_runs", [("crelu-epochs", 6, 8), ("supervised", 12, 0),
                                                       ("forms", 18, 5), ("device-check", 0, 8),
                                                       ("fused-order", 6, 0)])
def test_studies_with_single_runs_declare_the_committed_runs(name, sweep_runs, single_runs):
    """Issue #29 item 3, docs/strength.md's studies and the GPU call's runs as declared studies: their sweeps plan
    exactly the committed sweeps' runs, and each of their single runs (every seed in one `continual run` folder) has
    the committed run's settings (as `run --resume` compares them: only --out and --data-dir may differ) and all its
    rows (device-check's: the tasks its time budget allowed, 2–5)."""
    from dataclasses import asdict

    from continual.config import changed_settings
    from continual.sweep import _comparable

    planned = [r for cfg, grid in configs(name, RESULTS) for r in plan(cfg, list(grid) if grid else None)]
    assert [status(r) for r in planned] == ["finished"] * sweep_runs
    singles = [cfg for cfg, _ in configs(name, RESULTS, one_run=True)]
    committed = {folder for folder, c in run_configs(RESULTS / name) if "nonstationarity" in c}  # not forms' SAC runs
    assert {Path(c.out) for c in singles} == committed - {Path(r.config.out) for r in planned}
    assert len(singles) == single_runs
    for cfg in singles:
        saved = json.loads((Path(cfg.out) / "config.json").read_text())
        assert changed_settings(saved, _comparable(asdict(cfg))) == [], cfg.out
        with open(Path(cfg.out) / "results.csv") as fh:
            rows = len(list(csv.DictReader(fh)))
        assert rows == cfg.tasks * len(cfg.seeds) or (name == "device-check" and 2 <= rows <= 5), (cfg.out, rows)


def test_crelu_epochs_study_runs_its_sweep_and_single_runs_and_resumes(tmp_path):
    # A tiny version (the study's widths kept): the sweep and every single run, then the report; again, nothing is
    # retrained.
    tiny = [a for a in TINY if a not in ("--width", "16")]
    done = study("crelu-epochs", "--out", str(tmp_path), "--seeds", "0", "1", *tiny)
    assert done.returncode == 0, done.stderr[-2000:]
    single = tmp_path / "crelu-epochs" / "t5-e40" / "crelu-w334"
    with open(single / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["seed"], r["task"], r["width"]) for r in rows} == {(s, t, "334") for s in "01" for t in "12"}
    report = (tmp_path / "crelu-epochs" / "report.md").read_text()
    assert all(f"## {f}" in report for f in ("t2-e120", "t5-e40", "t5-e120", "t10-e120")), report
    before = single.joinpath("results.csv").stat().st_mtime_ns
    again = study("crelu-epochs", "--out", str(tmp_path), "--seeds", "0", "1", *tiny, "--workers", "2")  # processes
    assert again.returncode == 0 and single.joinpath("results.csv").stat().st_mtime_ns == before, again.stderr[-2000:]


def test_heldout_overview_sets_each_tuned_score_beside_the_heldout_seeds_over_the_same_tasks():
    """`study heldout --report`'s overview (results.md's "held out against tuned" tables), against a computation
    from the committed packed rows alone: spectral λ = 1 without LayerNorm, the mean over seeds 0–1 (tuned) and 3–5
    (held out) of each run's mean train accuracy over tasks 16–20."""
    from continual.studies import heldout_table
    from specopt.experiment import mean_se

    def window_means(folder: Path, strength: float) -> dict[str, float]:
        per: dict[str, list[float]] = {}
        with open(folder / "rows.csv", newline="") as f:
            for r in csv.DictReader(f):
                if float(r["strength"]) == strength and 16 <= int(r["task"]) <= 20:  # ("1.0" or "1")
                    per.setdefault(r["seed"], []).append(float(r["train_accuracy"]))
        assert all(len(v) == 5 for v in per.values())
        return {seed: sum(v) / 5 for seed, v in per.items()}

    tuned = window_means(RESULTS / "tuned" / "noln" / "spectral", 1.0)
    held = window_means(RESULTS / "heldout" / "noln" / "spectral", 1.0)
    assert sorted(tuned) == ["0", "1"] and sorted(held) == ["3", "4", "5"]
    t = sum(tuned.values()) / 2
    h, se = mean_se(list(held.values()))
    table = heldout_table(RESULTS, "noln")
    assert (f"| spectral | 1 (tuned best) | {t:.3f} (2 seeds) | {h:.3f} ± {se:.3f} (3 seeds) | {h - t:+.3f} ± "
            f"{se:.3f} |") in table, table
    assert table.splitlines()[0].startswith("| mitigator | strength | tuning runs, tasks 16–20 |")
