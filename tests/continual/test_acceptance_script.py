"""A tiny version of the acceptance path: scripts/continual_acceptance.sh on generated Fashion-MNIST IDX files."""

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.continual.test_pipeline import make_idx_folder

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "continual_acceptance.sh"


def run_script(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)


def test_acceptance_script_runs_every_variant_and_reports(tmp_path):
    make_idx_folder(tmp_path / "data", n=60)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "ACCEPT_EXTRA": f"--tasks 2 --epochs 1 --train-size 48 --batch-size 16 --width 16 "
                           f"--data-dir {tmp_path / 'data'}",
           "ACCEPT_SEEDS": "0", "ACCEPT_OTHERS": "redo", "ACCEPT_FIGURES": str(tmp_path / "figures"),
           "ACCEPT_RESULTS": str(tmp_path / "results")}
    out = tmp_path / "accept"
    first = run_script("2", str(out), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    names = {"none-seed0", "spectral-seed0", "redo-seed0"}
    for variant, layernorm in (("noln", "0"), ("ln", "1")):
        assert {p.name for p in (out / variant).iterdir()} == names
        for name in names:
            rows = list(csv.DictReader((out / variant / name / "results.csv").open()))
            assert [(r["seed"], r["task"]) for r in rows] == [("0", "1"), ("0", "2")]
            assert all(r["dataset"] == "fashion-mnist" and r["layernorm"] == layernorm for r in rows)
    report = run_script("--report", str(out), env=env)
    assert report.returncode == 0, report.stderr
    assert "| none | 1 | 2 |" in report.stdout and "| spectral (1) +LN | 1 | 2 |" in report.stdout
    assert "| redo" in report.stdout
    assert "| none | 0 | 2 |" in report.stdout and "| spectral (1) +LN | 0 | 2 |" in report.stdout  # per seed
    for variant in ("noln", "ln"):
        for suffix in ("", "-sigma_max", "-dormant_fraction"):
            assert (tmp_path / "figures" / f"acceptance-{variant}{suffix}.png").read_bytes()[:4] == b"\x89PNG"


    collect = run_script("--collect", str(out), env=env)
    assert collect.returncode == 0, collect.stderr
    for variant in ("noln", "ln"):
        assert {p.name for p in (tmp_path / "results" / variant).iterdir()} == {f"{n}.csv" for n in names}
        for name in names:
            assert (tmp_path / "results" / variant / f"{name}.csv").read_text() == \
                (out / variant / name / "results.csv").read_text()
    env["ACCEPT_FIGURES"] = str(tmp_path / "figures-from-rows")
    again = run_script("--report", str(tmp_path / "results"), env=env)  # the report from the collected rows
    assert again.returncode == 0, again.stderr

    def tables(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(("|", "##"))]

    assert tables(again.stdout) == tables(report.stdout) and len(tables(report.stdout)) > 10
    assert (tmp_path / "figures-from-rows" / "acceptance-ln.png").read_bytes()[:4] == b"\x89PNG"
