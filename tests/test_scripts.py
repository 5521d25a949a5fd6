"""Every script under scripts/ that docs/ tells a user to run runs end to end at a tiny size (the ones tested
elsewhere: docs_tables, gradient_rms, penalty_ratio, rl_run_table, strength_tradeoff,
device_rl; rl_strength_mapping in tests/rl/test_train.py), so none can rot: each is run as a user runs it, from
the repository root, and its output checked."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.continual.test_pipeline import write_idx

ROOT = Path(__file__).resolve().parents[1]


def script(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if ok:
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_strength_mechanism_fits_and_reports_every_variant(tmp_path):
    out = tmp_path / "forms.csv"
    script("scripts/strength_mechanism.py", "--variants", "adam", "spectral:1", "no-heads:1", "one-sided:1",
           "precondition:1e-3", "--scales", "1", "--steps", "20", "--seeds", "0", "--out", out)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 5 and all(0 <= float(r["relative_error"]) for r in rows), rows
    report = script("scripts/strength_mechanism.py", "--report", out).stdout
    assert report.count("\n| 1 |") == 5 and "| precondition | 0.001 | 1 |" in report


def test_strength_sweep_and_its_report_run_on_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), True)
    rows = tmp_path / "sweep.csv"
    script("scripts/strength_sweep.py", "--variants", "none", "coupled:1e-4", "decoupled:1", "--tasks", "2",
           "--epochs", "1", "--train-size", "64", "--data-dir", tmp_path, "--out", rows)
    read = list(csv.DictReader(rows.open()))
    assert sorted({r["variant"] for r in read}) == ["coupled:1e-4", "decoupled:1", "none"] and len(read) == 6
    figure = tmp_path / "sweep.png"
    table = script("scripts/sweep_report.py", rows, "-o", figure).stdout
    assert figure.stat().st_size > 0 and all(v in table for v in ("none", "coupled:1e-4", "decoupled:1"))


def test_every_script_is_in_the_index_and_every_shell_script_parses():
    """scripts/README.md lists every script (what it does, who uses it); the shell recipes that need a GPU or hours
    (device_*.sh, rl_*.sh) at least parse."""
    index = (ROOT / "scripts" / "README.md").read_text()
    scripts = sorted(p for p in (ROOT / "scripts").iterdir() if p.suffix in (".py", ".sh"))
    assert scripts and [p.name for p in scripts if f"`{p.name}`" not in index] == []
    for sh in (p for p in scripts if p.suffix == ".sh"):
        done = subprocess.run(["bash", "-n", str(sh)], capture_output=True, text=True)
        assert done.returncode == 0, (sh.name, done.stderr)
