"""Measurement: discounted Monte-Carlo returns, evaluation, and diagnostics that never disturb training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rl.config import Config
from rl.envs import make_env
from rl.sac import SAC
from rl.train import diagnostics, discounted_returns, evaluate

from .test_sac import filled_buffer


def test_discounted_returns():
    g = discounted_returns(np.array([1.0, 2.0, 3.0]), 0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


def test_evaluate_is_deterministic_and_reports_overestimation():
    cfg = Config(hidden=16, eval_episodes=2, action_repeat=8)
    env = make_env("cheetah-run", seed=42, action_repeat=8)
    torch.manual_seed(0)
    agent = SAC(17, 6, cfg)
    r = evaluate(agent, env, cfg)
    assert r["mc_states"] == 2 * 125  # 125-step episodes are shorter than the 459-step horizon: all states used
    assert r["q_overestimation"] == pytest.approx(r["q_eval_mean"] - r["mc_return_eval"])
    env2 = make_env("cheetah-run", seed=42, action_repeat=8)
    assert evaluate(agent, env2, cfg)["eval_return_mean"] == r["eval_return_mean"]


def test_diagnostics_do_not_change_the_training_random_stream():
    torch.manual_seed(0)
    agent = SAC(5, 3, Config(hidden=16))
    state = torch.get_rng_state()
    row = diagnostics(agent, filled_buffer(), Config(hidden=16, diagnostic_batch=32), step=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert {"grad_norm_actor", "grad_norm_critic", "sigma1_critic_mean", "alpha"} <= set(row)
    assert np.isnan(row["critic_loss"])  # no update yet
