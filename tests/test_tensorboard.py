"""--tensorboard logs the same numbers as the CSV rows (continual: per task; rl: per evaluation and agent)."""

from __future__ import annotations

import csv
import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def scalars(log_dir) -> dict[str, dict[int, float]]:
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def test_continual_run_logs_each_task_row(tmp_path):
    from continual.cli import main

    assert main(["run", "--dataset", "digits", "--tasks", "2", "--epochs", "1", "--mitigator", "none", "spectral",
                 "--out", str(tmp_path), "--tensorboard", "--no-progress"]) == 0
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for mitigator in ("none", "spectral"):
        logged = scalars(tmp_path / "tensorboard" / f"{mitigator}-seed0")
        for row in (r for r in rows if r["mitigator"] == mitigator):
            step = int(row["task"])
            assert logged["train_accuracy"][step] == pytest.approx(float(row["train_accuracy"]), rel=1e-6)
            assert logged["sigma_max"][step] == pytest.approx(float(row["sigma_max"]), rel=1e-6)


def test_rl_train_logs_each_agents_rows(tmp_path):
    from rl.config import Agent, Config
    from rl.train import agent_dir, train

    from .rl.conftest import TINY

    cfg = Config(out=str(tmp_path), **{**TINY, "steps": 250, "mitigators": ("none", "spectral"), "tensorboard": True})
    train(cfg)
    for agent in (Agent("none", 0, None), Agent("spectral", 0, 1.0)):
        with open(agent_dir(cfg, agent) / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        logged = scalars(agent_dir(cfg, agent) / "tensorboard")
        for row in rows:
            for key in ("eval_return_mean", "sigma1_critic_mean", "critic_loss"):
                if not math.isnan(float(row[key])):
                    assert logged[key][int(row["step"])] == pytest.approx(float(row[key]), rel=1e-6)
