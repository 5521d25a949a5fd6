"""N agents in one process equal N agents trained alone: the same updates on the same batches, and the same runs."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from rl.buffer import Batch
from rl.config import Agent, Config
from rl.sac import SAC
from rl.train import agent_dir, train

from .conftest import TINY

OBS, ACT, B = 5, 3, 16
SMALL = dict(hidden=16, batch_size=B, reset_interval=4, spectral_strength=2.0, l2_strength=1e-2)
MITIGATORS = ("none", "spectral", "resets", "l2", "l2-init")


def fixed_batches(n_agents: int, updates: int) -> list[Batch]:
    g = torch.Generator().manual_seed(7)
    return [Batch(torch.randn(n_agents, B, OBS, generator=g), torch.rand(n_agents, B, ACT, generator=g) * 2 - 1,
                  torch.randn(n_agents, B, generator=g), torch.randn(n_agents, B, OBS, generator=g),
                  (torch.rand(n_agents, B, generator=g) < 0.1).float())
            for _ in range(updates)]


def agent_slice(batch: Batch, i: int) -> Batch:
    return Batch(*(t[i:i + 1] for t in batch))


def test_each_agent_of_a_vectorized_update_equals_a_single_agent():
    cfg = Config(mitigators=MITIGATORS, seeds=(0, 3), **SMALL)
    together = SAC(OBS, ACT, cfg)
    alone = [SAC(OBS, ACT, Config(mitigators=(a.mitigator,), seeds=(a.seed,), **SMALL)) for a in cfg.agents]
    batches = fixed_batches(len(cfg.agents), updates=6)  # update 4 resets the resets agents, 5-6 train them anew
    for b in batches:
        together.update(b)
        for i, single in enumerate(alone):
            single.update(agent_slice(b, i))
    assert together.resets == [int(a.mitigator == "resets") for a in cfg.agents]
    for i, single in enumerate(alone):
        for name, p, q in zip([n for n, _ in together.critic.named_parameters()], together.critic_params,
                              single.critic_params):
            torch.testing.assert_close(p[i], q[0], rtol=1e-4, atol=1e-5, msg=lambda m: f"agent {i} critic {name}: {m}")
        for p, q in zip(together.actor_params + together.target_params, single.actor_params + single.target_params):
            torch.testing.assert_close(p[i], q[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(together.log_alpha[i], single.log_alpha[0])
        for key in together.info:
            torch.testing.assert_close(together.info[key][i], single.info[key][0], rtol=1e-4, atol=1e-5)


def test_agents_differ_by_seed_and_mitigator_only_where_they_should():
    cfg = Config(mitigators=("none", "spectral"), seeds=(0, 1), **SMALL)
    a = SAC(OBS, ACT, cfg)
    w = a.actor_params[0]
    assert torch.equal(w[0], w[2]) and torch.equal(w[1], w[3])  # same seed, same initialization
    assert not torch.equal(w[0], w[1])
    a.update(fixed_batches(4, 1)[0])
    assert not torch.equal(w[0], w[2])  # the spectral step moved agent 2 (spectral, seed 0) away from agent 0
    assert a.strength.tolist() == [0.0, 0.0, 2.0, 2.0]


def rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(f)]


def close(a: str, b: str) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return a == b
    return (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-3)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_vectorized_run_writes_each_agent_as_its_single_run(tmp_path, workers):
    """The run's plumbing (environments in worker processes, streams, evaluation, rows) per agent. Without updates
    (replay ratio 0) the agents stay at their initialization, so rows agree to float tolerance; with updates, the
    agents agree to float tolerance (test above) but a 1e-6 change of the policy changes an evaluation episode's
    return by several units (the simulator is chaotic), so whole trained runs cannot be compared row by row."""
    run = dict(TINY, steps=250, mitigators=("none", "spectral", "resets"), seeds=(0, 1), replay_ratio=0,
               env_workers=workers)
    together = Config(out=str(tmp_path / "together"), **run)
    train(together)
    for m, s in [("spectral", 1), ("resets", 0)]:
        single = Config(out=str(tmp_path / f"alone-{m}"), **{**run, "mitigators": (m,), "seeds": (s,), "env_workers": 0})
        train(single)
        agent = Agent(m, s, 1.0 if m == "spectral" else None)
        a, b = rows(agent_dir(together, agent) / "results.csv"), rows(agent_dir(single, agent) / "results.csv")
        assert [r["step"] for r in a] == ["100", "200"] and len(a) == len(b)
        for ra, rb in zip(a, b):
            assert ra["mitigator"] == m and ra["seed"] == str(s)
            bad = {k: (ra[k], rb[k]) for k in ra if not close(ra[k], rb[k])}
            assert not bad, f"{m}: {bad}"
    first = rows(agent_dir(together, Agent("none", 0, None)) / "results.csv")
    other = rows(agent_dir(together, Agent("none", 1, None)) / "results.csv")
    assert first[0]["eval_return_mean"] != other[0]["eval_return_mean"]  # seeds differ


def test_a_killed_vectorized_run_resumes_every_agent_exactly(tmp_path):
    run = dict(TINY, steps=375, mitigators=("none", "spectral"), seeds=(0, 1), reset_interval=100, env_workers=0)
    full = Config(out=str(tmp_path / "full"), **run)
    train(full)
    split = Config(out=str(tmp_path / "split"), **{**run, "steps": 250})
    train(split)  # stops at the checkpoint of step 250, as a killed run would have left it
    with open(agent_dir(split, Agent("spectral", 1, 1.0)) / "results.csv", "a") as f:
        f.write("spectral,1.0,1,300,garbage\n")  # a row written after the checkpoint by the killed process
    train(Config(out=str(tmp_path / "split"), **run), resume=True, explicit={"steps"})
    for a in full.agents:
        assert rows(agent_dir(full, a) / "results.csv") == rows(agent_dir(split, a) / "results.csv"), a


def test_a_strength_grid_makes_one_agent_per_strength(tmp_path):
    cfg = Config(mitigators=("none", "spectral", "l2"), seeds=(0, 1), strengths=(0.01, 1.0), **{
        k: v for k, v in SMALL.items() if k != "spectral_strength"})
    assert [tuple(a) for a in cfg.agents] == [("none", 0, None), ("none", 1, None),
                                              ("spectral", 0, 0.01), ("spectral", 1, 0.01),
                                              ("spectral", 0, 1.0), ("spectral", 1, 1.0),
                                              ("l2", 0, 0.01), ("l2", 1, 0.01), ("l2", 0, 1.0), ("l2", 1, 1.0)]
    a = SAC(OBS, ACT, cfg)
    assert a.strength.tolist() == pytest.approx([0, 0, 0.01, 0.01, 1, 1, 0, 0, 0, 0])
    assert a.l2.tolist() == pytest.approx([0, 0, 0, 0, 0, 0, 0.01, 0.01, 1, 1])
    assert cfg.agent_name(cfg.agents[4]) == "spectral-s1-seed0" and cfg.agent_name(cfg.agents[0]) == "none-seed0"
    assert cfg.agent_dict(cfg.agents[2])["spectral_strength"] == 0.01
    assert cfg.agent_dict(cfg.agents[8])["l2_strength"] == 1.0
