"""End-to-end through the real DMC path: metrics/config files, exact resume, CLI errors, plotting."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from rl.cli import main
from rl.config import Config
from rl.sac import SAC
from rl.train import train

from .conftest import TINY

# 375 steps = 3 episodes of 125; evaluations every 100 steps; checkpoints at 250 and 375 (episode ends)
RUN = dict(TINY, steps=375, mitigator="spectral")


def rows(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(f)]


def checkpoint(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)


def assert_same_state(a, b, path="ckpt"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k != "config":
                assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{path}[{i}]")
    elif hasattr(a, "shape"):  # numpy arrays in the env RandomState
        assert (a == b).all(), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    torch.set_num_threads(1)
    train(Config(out=str(out), **RUN))
    return out


def test_tiny_run_writes_metrics_and_config(full_run):
    cfg = json.loads((full_run / "config.json").read_text())
    assert cfg["env"] == "cheetah-run" and cfg["mitigator"] == "spectral" and cfg["steps"] == 375
    table = rows(full_run)
    assert [int(r["step"]) for r in table] == [100, 200, 300]
    required = {"step", "updates", "episodes", "eval_return_mean", "eval_return_std", "train_return_recent",
                "q_replay_mean", "q_eval_mean", "mc_return_eval", "q_overestimation", "param_norm_actor",
                "param_norm_critic", "grad_norm_actor", "grad_norm_critic", "alpha", "entropy",
                "sigma1_actor_mean", "sigma1_critic_mean", "sigma1_actor.net.0.weight",
                "sigma1_critic.qs.0.0.weight"}
    assert required <= set(table[0])
    last = table[-1]
    assert int(last["updates"]) == 300 - 50 + 1  # replay ratio 1 from the step the warm-up completes
    assert int(last["episodes"]) == 2
    assert float(last["alpha"]) < 1.0  # the temperature is learning


def test_time_limits_are_stored_as_not_terminated(full_run):
    buffer = checkpoint(full_run)["buffer"]
    assert buffer["size"] == 375 and float(buffer["terminated"].sum()) == 0.0  # 3 truncated episodes


def test_resume_after_a_clean_stop_is_identical(full_run, tmp_path):
    out = tmp_path / "split"
    train(Config(out=str(out), **dict(RUN, steps=250)))
    assert main(["train", "--resume", "--out", str(out), "--steps", "375", "--no-progress"]) == 0
    assert rows(out) == rows(full_run)
    assert_same_state(checkpoint(out), checkpoint(full_run))  # networks, optimizers (power iteration), buffer, RNGs


def test_resume_after_a_crash_drops_rows_past_the_checkpoint_and_recomputes_them(full_run, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    calls = {"n": 0}
    real = SAC.update_block

    def crash_at_step_350(self, batches):
        calls["n"] += 1
        if calls["n"] == 301:  # updates start at step 50
            raise KeyboardInterrupt
        return real(self, batches)

    monkeypatch.setattr(SAC, "update_block", crash_at_step_350)
    with pytest.raises(KeyboardInterrupt):
        train(Config(out=str(out), **RUN))
    monkeypatch.setattr(SAC, "update_block", real)
    assert [int(r["step"]) for r in rows(out)] == [100, 200, 300]  # 300 is past the checkpoint (250)
    assert checkpoint(out)["step"] == 250
    (out / "checkpoint.pt.tmp").write_bytes(b"half-written")  # a write interrupted by the crash is ignored
    train(Config(out=str(out), **RUN), resume=True)
    assert rows(out) == rows(full_run)
    assert_same_state(checkpoint(out), checkpoint(full_run))


def test_resume_cannot_change_the_experiment(full_run, capsys):
    assert main(["train", "--resume", "--out", str(full_run), "--mitigator", "none"]) == 2
    assert "cannot change mitigator" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten_without_resume(full_run, capsys):
    assert main(["train", "--out", str(full_run), "--steps", "10"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_plot_draws_figure_and_prints_table(full_run, tmp_path, capsys):
    fig = tmp_path / "fig.png"
    assert main(["plot", str(full_run), "-o", str(fig)]) == 0
    out = capsys.readouterr().out
    assert fig.stat().st_size > 0
    assert "| cheetah-run | spectral λ=1 buffer 1k RR1 | 1 | 300 |" in out


def test_plot_standard_error_over_seeds(tmp_path):
    from rl.plot import load, mean_se

    for seed, returns in ((0, [1.0, 3.0, 7.0]), (1, [3.0, 5.0])):  # seed 1 stopped after two evaluations
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "config.json").write_text(json.dumps(dict(Config(seed=seed).to_dict())))
        (d / "metrics.csv").write_text("step,eval_return_mean\n" + "".join(f"{(i + 1) * 10},{r}\n" for i, r in enumerate(returns)))
    [(env, curves)] = load([str(tmp_path)]).items()
    steps, mean, se, n = mean_se(curves["none RR16"])
    assert steps.tolist() == [10, 20, 30] and mean.tolist() == [2.0, 4.0, 7.0] and n.tolist() == [2, 2, 1]
    assert se.tolist() == pytest.approx([1.0, 1.0, 0.0])  # std (ddof 1) √2 over √2 seeds; one seed: 0
