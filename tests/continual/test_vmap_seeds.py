"""Several seeds in one process (stacked parameters + vmap) reproduce the sequential runner's rows."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import pytest
import torch

import specopt

from continual import vmap_seeds
from continual.runner import COLUMNS, RunConfig, run_experiment
from continual.vmap_seeds import StackedSeeds
from specopt.experiment import max_row_difference, read_csv


def config(out: Path, **kw) -> RunConfig:
    settings = dict(dataset="digits", nonstationarity="random-labels", model="mlp", mitigators=["none"],
                    seeds=[0, 3], tasks=2, epochs=2, batch_size=64, train_size=256, width=32, probe_size=64,
                    out=str(out))
    settings.update(kw)
    return RunConfig(**settings)


@pytest.mark.parametrize("nonstationarity, mitigator, layernorm", [
    ("random-labels", "none", False), ("pixel-permutation", "none", False), ("class-incremental", "none", False),
    ("random-labels", "spectral", False), ("label-flip", "spectral", True), ("random-labels", "l2", False),
    ("pixel-permutation", "l2-init", True), ("random-labels", "wasserstein", False)])
def test_vectorized_seeds_match_the_sequential_runner(tmp_path, nonstationarity, mitigator, layernorm):
    kw = dict(nonstationarity=nonstationarity, mitigators=[mitigator], layernorm=layernorm)
    seq = run_experiment(config(tmp_path / "seq", **kw), progress=False)
    vec = run_experiment(config(tmp_path / "vec", vectorize_seeds=True, **kw), progress=False)
    assert {r["mitigator"] for r in vec} == {mitigator}
    assert [(r["seed"], r["task"], r["step"]) for r in vec] == [(r["seed"], r["task"], r["step"]) for r in seq]
    assert max_row_difference(seq, vec, "train_accuracy") <= 0.01
    assert max_row_difference(seq, vec, "train_loss") <= 1e-3
    assert max_row_difference(seq, vec, "test_accuracy") <= 0.01
    assert max_row_difference(seq, vec, "sigma_max") <= 1e-3
    rows = read_csv(tmp_path / "vec" / "results.csv")
    assert list(rows[0]) == COLUMNS and len(rows) == 4


def test_each_seed_gets_its_own_adam_step(tmp_path):
    """One stacked step equals one plain Adam step per seed on that seed's batch."""
    cfg = config(tmp_path, epochs=1, train_size=64)  # one batch per epoch: one step
    from continual.data import load_dataset
    ds = load_dataset("digits", train_size=64)
    stacked = StackedSeeds(cfg, ds, cfg.seeds)
    stacked.train_task(0)
    for s, run in enumerate(StackedSeeds(cfg, ds, cfg.seeds).runs):  # fresh copies of the same initialisation
        task = vmap_seeds.make_task(ds, cfg.nonstationarity, run.seed, 0)
        idx = torch.randperm(64, generator=vmap_seeds.batch_generator(run.seed, 0, 0))
        opt = torch.optim.Adam(run.model.parameters(), lr=cfg.lr)
        torch.nn.functional.cross_entropy(run.model(task.x_train[idx]), task.y_train[idx]).backward()
        opt.step()
        for name, p in run.model.named_parameters():
            torch.testing.assert_close(stacked.params[name][s], p.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layernorm, strength, k", [(False, 1.0, 2), (True, 1.0, 2), (True, 1000.0, 2), (False, 1.0, 4)])
def test_each_seed_gets_its_own_spectral_adam_step(tmp_path, layernorm, strength, k):
    """Three stacked steps equal three SpectralAdam steps per seed (a matrix, bias and scale step each), and differ
    from plain Adam's; at strength 1000 (lr·λ = 1) the steps are truncated at their targets, in both; the
    ``--spectral.k`` option reaches the stacked step."""
    cfg = config(tmp_path, epochs=3, train_size=64, mitigators=["spectral"], layernorm=layernorm, strength=strength,
                 options={"spectral": {"k": k}})
    from continual.data import load_dataset
    ds = load_dataset("digits", train_size=64)
    stacked = StackedSeeds(cfg, ds, cfg.seeds)
    stacked.train_task(0)
    roles = dict(zip(stacked.params, stacked.optimizer.roles))
    state = dict(zip(stacked.params, stacked.optimizer.state))
    assert {n for n, st in state.items() if "spectral_u" in st} == {n for n, r in roles.items() if r == "matrix"}
    fresh = StackedSeeds(cfg, ds, cfg.seeds).runs
    for s, run in enumerate(fresh):
        task = vmap_seeds.make_task(ds, cfg.nonstationarity, run.seed, 0)
        adam_model = copy.deepcopy(run.model)
        spectral = specopt.SpectralAdam(specopt.param_groups(run.model), lr=cfg.lr, strength=strength, k=k)
        adam = torch.optim.Adam(adam_model.parameters(), lr=cfg.lr)
        for epoch in range(3):
            idx = torch.randperm(64, generator=vmap_seeds.batch_generator(run.seed, 0, epoch))
            for model, opt in ((run.model, spectral), (adam_model, adam)):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(task.x_train[idx]), task.y_train[idx]).backward()
                opt.step()
        adam_params = dict(adam_model.named_parameters())
        for name, p in run.model.named_parameters():
            torch.testing.assert_close(stacked.params[name][s], p.detach(), rtol=1e-5, atol=1e-6)
            if roles[name] == "matrix" or (roles[name] == "bias" and k == 2):  # (‖b‖^2k: too small to see at k=4)
                assert (p - adam_params[name]).abs().max() > 1e-6, name  # the spectral step did something
        for name, st in state.items():
            if "spectral_u" in st:
                p = dict(run.model.named_parameters())[name]
                torch.testing.assert_close(st["spectral_u"][s], spectral.state[p]["spectral_u"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mitigator, decoupled", [("l2", False), ("l2-init", False), ("wasserstein", False),
                                                  ("l2-init", True), ("wasserstein", True)])
def test_each_seed_gets_its_own_regularized_step(tmp_path, mitigator, decoupled):
    """Three stacked steps equal three steps of the sequential loop (Adam + the seed's own mitigator: its coupled
    penalty, or its decoupled step after Adam's), and differ from plain Adam's."""
    from continual.data import load_dataset
    from continual.mitigators import build_mitigator

    strength = 1e-2  # large enough to be seen after three steps
    cfg = config(tmp_path, epochs=3, train_size=64, mitigators=[mitigator], strength=strength,
                 options={mitigator: {"decoupled": decoupled}})
    ds = load_dataset("digits", train_size=64)
    stacked = StackedSeeds(cfg, ds, cfg.seeds)
    assert len(stacked.regularizers) == 2 and all(r.decoupled == decoupled for r in stacked.regularizers)
    stacked.train_task(0)
    for s, run in enumerate(StackedSeeds(cfg, ds, cfg.seeds).runs):
        task = vmap_seeds.make_task(ds, cfg.nonstationarity, run.seed, 0)
        adam_model = copy.deepcopy(run.model)
        mit = build_mitigator(mitigator, run.model, cfg.lr, strength, decoupled=decoupled)
        adam = torch.optim.Adam(adam_model.parameters(), lr=cfg.lr)
        for epoch in range(3):
            idx = torch.randperm(64, generator=vmap_seeds.batch_generator(run.seed, 0, epoch))
            x, y = task.x_train[idx], task.y_train[idx]
            mit.optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(run.model(x), y)
            penalty = mit.penalty(run.model)
            assert (penalty is None) == decoupled
            (loss if penalty is None else loss + penalty).backward()
            mit.optimizer.step()
            mit.after_step(epoch, x)
            adam.zero_grad()
            torch.nn.functional.cross_entropy(adam_model(x), y).backward()
            adam.step()
        adam_params = dict(adam_model.named_parameters())
        differs = []
        for name, p in run.model.named_parameters():
            torch.testing.assert_close(stacked.params[name][s], p.detach(), rtol=1e-5, atol=1e-6)
            differs.append((p - adam_params[name]).abs().max().item() > 1e-7)
        assert any(differs)  # the regularizer did something


@pytest.mark.parametrize("mitigator", ["none", "spectral", "l2-init"])
def test_vectorized_resume_after_a_kill_reproduces_the_rows(tmp_path, monkeypatch, mitigator):
    make = functools.partial(config, mitigators=[mitigator], vectorize_seeds=True)
    run_experiment(make(tmp_path / "full", tasks=3), progress=False)
    real = StackedSeeds.train_task

    def dying(self, t, progress=None):
        if t == 2:
            raise KeyboardInterrupt
        return real(self, t, progress)

    monkeypatch.setattr(StackedSeeds, "train_task", dying)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(make(tmp_path / "resumed", tasks=3), progress=False)
    monkeypatch.setattr(StackedSeeds, "train_task", real)
    assert len(read_csv(tmp_path / "resumed" / "results.csv")) == 4
    run_experiment(make(tmp_path / "resumed", tasks=3), resume=True, progress=False)
    assert read_csv(tmp_path / "full" / "results.csv") == read_csv(tmp_path / "resumed" / "results.csv")


def test_a_checkpoint_written_before_mitigator_state_was_saved_still_resumes(tmp_path):
    from continual.data import load_dataset

    cfg = config(tmp_path, epochs=1, train_size=64)
    ds = load_dataset("digits", train_size=64)
    old = StackedSeeds(cfg, ds, cfg.seeds)
    old.train_task(0)
    state = old.state_dict()
    del state["mitigators"]  # the layout of checkpoints written before 2026-11-25
    new = StackedSeeds(cfg, ds, cfg.seeds)
    new.load_state_dict(state)
    assert new.next_task == 1
    for name, p in old.params.items():
        torch.testing.assert_close(new.params[name], p)


@pytest.mark.parametrize("change, message", [(dict(mitigators=["redo"]), "one --mitigator of none, spectral, l2"),
                                             (dict(mitigators=["none", "spectral"]), "one --mitigator of"),
                                             (dict(model="resnet18"), "model mlp only")])
def test_unsupported_settings_are_refused_with_a_clear_message(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(config(tmp_path, vectorize_seeds=True, **change), progress=False)


def test_cli_vectorize_seeds_writes_the_fixed_columns_and_refuses_other_mitigators(tmp_path, capsys):
    from continual.cli import main

    args = ["run", "--dataset", "digits", "--width", "16", "--tasks", "2", "--epochs", "1", "--batch-size", "64",
            "--train-size", "128", "--seeds", "0", "1", "--no-progress", "--no-diagnostics", "--vectorize-seeds"]
    assert main(args + ["--mitigator", "none", "--out", str(tmp_path / "ok")]) == 0
    rows = read_csv(tmp_path / "ok" / "results.csv")
    assert list(rows[0]) == COLUMNS and [(r["seed"], r["task"]) for r in rows] == [("0", "1"), ("0", "2"),
                                                                                    ("1", "1"), ("1", "2")]
    assert main(args + ["--mitigator", "spectral", "--out", str(tmp_path / "spectral")]) == 0
    assert {r["mitigator"] for r in read_csv(tmp_path / "spectral" / "results.csv")} == {"spectral"}
    assert main(args + ["--mitigator", "redo", "--out", str(tmp_path / "bad")]) == 2
    assert "supports one --mitigator of none, spectral, l2, l2-init, wasserstein, got redo" in capsys.readouterr().err
