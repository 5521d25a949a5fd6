"""Every script in examples/ runs at tiny size and prints what it promises (a user reads these in one sitting)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import specopt

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "swap_in.py": "σ1 per layer",
    "continual_run.py": " spectral: train accuracy at each task's end",
    "rl_run.py": f"| cheetah-run | spectral λ={specopt.DEFAULT_STRENGTH:g} ",  # rl's spectral default
    "property_test.py": "property holds on every example",
}


def test_every_example_is_covered():
    assert sorted(p.name for p in (ROOT / "examples").glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script, tmp_path):
    # the packages of this tree, not whichever checkout is installed: the script's folder is examples/, not the root
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, MUJOCO_GL="disable", OMP_NUM_THREADS="1", PYTHONPATH=path)
    done = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--tiny"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert EXPECTED[script] in done.stdout, done.stdout[-2000:]
