"""Measurement: discounted Monte-Carlo returns, evaluation of N agents on their own environments, and
diagnostics that never disturb training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl import streams
from rl.config import Config
from rl.envs import VectorEnv, make_env
from rl.sac import SAC
from rl.train import diagnostics, discounted_returns, evaluate

from .test_sac import filled_buffer, sample

EVAL = dict(hidden=16, eval_episodes=2, action_repeat=8, seeds=(0, 1))


def test_discounted_returns():
    g = discounted_returns(np.array([1.0, 2.0, 3.0]), 0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


def eval_envs(seeds=(42, 43)) -> VectorEnv:
    return VectorEnv([("cheetah-run", s, 8) for s in seeds], workers=0)


def test_evaluate_is_deterministic_and_reports_overestimation():
    cfg = Config(**EVAL)
    agent = SAC(17, 6, cfg)
    r = evaluate(agent, eval_envs(), [0, 1], cfg)
    assert len(r) == 2
    for row in r:
        assert row["mc_states"] == 2 * 125  # 125-step episodes are shorter than the 459-step horizon: all states
        assert row["q_overestimation"] == pytest.approx(row["q_eval_mean"] - row["mc_return_eval"])
    assert r[0]["eval_return_mean"] != r[1]["eval_return_mean"]  # different agents, different environments
    assert evaluate(agent, eval_envs(), [0, 1], cfg) == r  # deterministic policies on freshly seeded envs
    # agent n plays on environment which[n]: the same envs in the other order give the same results
    assert evaluate(agent, eval_envs((43, 42)), [1, 0], cfg) == r


def test_evaluate_matches_an_independent_rollout_with_the_horizon_cut():
    """Each agent alone on its own env, by hand: returns, Q and discounted returns over the states that have at
    least H = ⌈log 0.01 / log γ⌉ steps left (γ = 0.9: H = 44, so 125 − 44 = 81 states of each episode)."""
    cfg = Config(**EVAL, gamma=0.9)
    agent = SAC(17, 6, cfg)
    r = evaluate(agent, eval_envs(), [0, 1], cfg)
    for n, seed in enumerate((42, 43)):
        env = make_env("cheetah-run", seed, 8)
        returns, qs, gs = [], [], []
        for _ in range(cfg.eval_episodes):
            obs, _ = env.reset()
            observations, actions, rewards, done = [], [], [], False
            while not done:
                o = torch.as_tensor(obs).expand(agent.n, 1, -1)  # every agent sees agent n's observation
                mean, _ = agent.actor(o)
                a = torch.tanh(mean[n, 0]).detach()
                observations.append(o[:, 0])
                actions.append(a.expand(agent.n, -1))
                obs, reward, terminated, truncated, _ = env.step(a.numpy())
                rewards.append(reward)
                done = terminated or truncated
            assert len(rewards) == 125 and not terminated
            returns.append(sum(rewards))
            q = agent.q_value(torch.stack(observations, 1), torch.stack(actions, 1))[n]
            qs.append(q[:81].numpy())
            g = [sum(0.9**k * x for k, x in enumerate(rewards[t:])) for t in range(81)]
            gs.append(np.array(g))
        assert r[n]["mc_states"] == 2 * 81
        assert r[n]["eval_return_mean"] == pytest.approx(np.mean(returns), rel=1e-6)
        assert r[n]["eval_return_std"] == pytest.approx(np.std(returns), rel=1e-5, abs=1e-9)
        assert r[n]["q_eval_mean"] == pytest.approx(np.concatenate(qs).mean(), rel=1e-5, abs=1e-6)
        assert r[n]["mc_return_eval"] == pytest.approx(np.concatenate(gs).mean(), rel=1e-6)


def test_diagnostics_do_not_change_the_training_streams():
    cfg = Config(hidden=16, batch_size=8, diagnostic_batch=32, seeds=(0, 1), mitigators=("none", "spectral"))
    measured, control = SAC(5, 3, cfg), SAC(5, 3, cfg)
    buf = filled_buffer(agents=4)
    rows = diagnostics(measured, buf, cfg, step=7)
    assert len(rows) == 4
    assert {"grad_norm_actor", "grad_norm_critic", "sigma1_critic_mean", "alpha", "q_replay_mean"} <= set(rows[0])
    assert all(np.isnan(row["critic_loss"]) for row in rows)  # no update yet
    for agent in (measured, control):
        agent.update(sample(buf, agent))
    counters = [c.clone() for c in measured.streams.counters]
    rng = torch.get_rng_state()
    rows = diagnostics(measured, buf, cfg, step=8)
    assert all(torch.equal(c, d) for c, d in zip(counters, measured.streams.counters))
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(np.isnan(row["critic_loss"]) for row in rows)
    for agent in (measured, control):  # the next update is the same with or without the measurement between
        agent.update_block(sample(buf, agent, blocks=2))
    for p, q in zip(measured.actor_params + measured.critic_params + measured.target_params + [measured.log_alpha],
                    control.actor_params + control.critic_params + control.target_params + [control.log_alpha]):
        assert torch.equal(p, q)
    for opt, other in ((measured.actor_opt, control.actor_opt), (measured.critic_opt, control.critic_opt)):
        for st, so in zip(opt.state, other.state):
            assert all(torch.equal(st[k], so[k]) for k in st)
    for key in measured.info:
        assert torch.equal(measured.info[key], control.info[key])
    assert all(torch.equal(c, d) for c, d in zip(measured.streams.counters, control.streams.counters))


def test_diagnostics_report_each_agents_own_values():
    cfg = Config(hidden=16, batch_size=8, diagnostic_batch=32, seeds=(0, 1, 2))
    agent = SAC(5, 3, cfg)
    buf = filled_buffer(agents=3)
    agent.update(sample(buf, agent))
    with torch.no_grad():
        agent.log_alpha.copy_(torch.tensor([0.1, 0.2, 0.3]).log())
    rows = diagnostics(agent, buf, cfg, step=5)
    critic = dict(agent.critic.named_parameters())
    for n, row in enumerate(rows):
        assert row["alpha"] == pytest.approx(0.1 * (n + 1))
        for key in ("critic_loss", "actor_loss", "alpha_loss", "entropy"):  # the last update's, per agent
            assert row[key] == pytest.approx(float(agent.info[key][n]))
        w = critic["qs.0.0.weight"][n].detach()
        assert row["sigma1_critic.qs.0.0.weight"] == pytest.approx(float(torch.linalg.svdvals(w)[0]), rel=1e-5)
        norm = torch.cat([p[n].detach().flatten() for p in agent.critic_params]).norm()
        assert row["param_norm_critic"] == pytest.approx(float(norm), rel=1e-5)
    # the diagnostic batch is the diagnostic stream's draw 3·step
    batch = buf.sample(32, agent.streams.keys[streams.DIAGNOSTIC], 15)
    q = agent.q_value(batch.obs, batch.action).mean(-1)
    assert [row["q_replay_mean"] for row in rows] == pytest.approx(q.tolist(), rel=1e-5)
