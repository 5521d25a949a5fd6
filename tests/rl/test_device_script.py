"""The prepared GPU run (scripts/device_rl.sh), rehearsed end to end on the CPU at tiny size: speed table, training
of none and spectral agents in one process, figure, table and the packed rows — at most 8 files in $OUT."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_device_rl_script_rehearsal(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), DEVICE="cpu", STEPS="250", SEEDS="0 1", TRAIN_BUDGET="300", AGENTS="2",
               BENCH_EXTRA="--hidden 16 --batch-size 16 --updates 16 --rounds 1 --threads 1",
               RL_EXTRA="--action-repeat 8 --warmup-steps 50 --eval-interval 100 --eval-episodes 1 --hidden 16 "
                        "--batch-size 16 --buffer-size 1000 --replay-ratio 2 --threads 1 --env-workers 1")
    done = subprocess.run(["bash", "scripts/device_rl.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["cheetah-run.png", "rows.tar.gz", "speed.md", "table.md", "train.log"]
    assert "vectorized / sequential:" in (out / "speed.md").read_text()
    table = (out / "table.md").read_text()
    assert "| cheetah-run | none" in table and "| cheetah-run | spectral" in table
    with tarfile.open(out / "rows.tar.gz") as tar:
        names = set(tar.getnames())
    for agent in ("none-seed0", "none-seed1", "spectral-seed0", "spectral-seed1"):
        assert f"./{agent}/results.csv" in names and f"./{agent}/config.json" in names
    assert not any(n.endswith("checkpoint.pt") for n in names)
