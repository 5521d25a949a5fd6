"""config.json records which code and machine trained a run: one entry per distinct code version of the processes
that did work (its start, then each resume with tasks or steps left), none for a resume of a finished run; no resume
guard compares it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import torch

os.environ.setdefault("MUJOCO_GL", "disable")

from continual.cli import main as continual_main  # noqa: E402
from rl.cli import main as rl_main  # noqa: E402

from .test_faults import RL, RUN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def provenance(folder: Path) -> list[dict]:
    return json.loads((folder / "config.json").read_text())["provenance"]


def test_continual_config_records_each_training_process(tmp_path):
    out = tmp_path / "run"
    flags = [a for a in RUN if a not in ("--tasks", "2")] + ["--out", str(out)]
    assert continual_main(flags + ["--tasks", "2"]) == 0
    (first,) = provenance(out)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert first["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert first["torch"] == torch.__version__ and first["gpu"] is None
    assert isinstance(first["dirty"], (bool, type(None)))
    assert first["cpu"]
    assert continual_main(flags + ["--tasks", "2", "--resume"]) == 0  # finished: nothing trained, nothing recorded
    assert provenance(out) == [first]


def test_rl_config_records_the_process_in_the_run_and_every_agent_folder(tmp_path):
    out = tmp_path / "run"
    assert rl_main(RL + ["--steps", "250", "--out", str(out)]) == 0
    (entry,) = provenance(out)
    assert provenance(out / "none-seed0") == [entry] and entry["torch"] == torch.__version__
    assert rl_main(RL + ["--out", str(out), "--resume", "--steps", "375"]) == 0  # the same code resumes: one entry
    assert provenance(out) == [entry]
    config = json.loads((out / "config.json").read_text())
    other = {**entry, "commit": "0" * 40}  # as if another commit had started the run
    (out / "config.json").write_text(json.dumps({**config, "provenance": [other]}))
    assert rl_main(RL + ["--out", str(out), "--resume", "--steps", "500"]) == 0  # this one resumes it: both listed
    assert provenance(out) == [other, entry]
