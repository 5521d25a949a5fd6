"""The DMC wrapper: flat float32 observations, actions in [-1, 1], seeds, truncation, action repeat, errors."""

from __future__ import annotations

import numpy as np
import pytest
from dm_control import suite

from rl.cli import main
from rl.envs import available_envs, make_env, parse_env_name


def test_observations_are_flat_float32_and_actions_in_unit_box():
    env = make_env("cheetah-run", seed=0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (17,) == env.observation_space.shape
    assert env.action_space.shape == (6,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)


def test_same_seed_same_episode_and_different_seed_differs():
    a, b, c = (make_env("cheetah-run", seed=s) for s in (3, 3, 4))
    oa, ob, oc = a.reset()[0], b.reset()[0], c.reset()[0]
    np.testing.assert_array_equal(oa, ob)
    assert not np.array_equal(oa, oc)
    act = np.full(6, 0.3, dtype=np.float32)
    np.testing.assert_array_equal(a.step(act)[0], b.step(act)[0])


def test_reset_seed_reseeds_the_task():
    env = make_env("cheetah-run", seed=0)
    first = env.reset(seed=11)[0]
    env.reset()
    np.testing.assert_array_equal(env.reset(seed=11)[0], first)


def test_time_limit_is_truncation_not_termination():
    env = make_env("cheetah-run", seed=0, action_repeat=4)
    env.reset()
    flags = [env.step(np.zeros(6))[2:4] for _ in range(env.max_episode_steps)]
    assert env.max_episode_steps == 250
    assert all(f == (False, False) for f in flags[:-1])
    assert flags[-1] == (False, True)  # terminated=False, truncated=True → the critic bootstraps


def test_action_repeat_sums_rewards_like_raw_dm_control():
    env = make_env("cheetah-run", seed=5, action_repeat=3)
    raw = suite.load("cheetah", "run", task_kwargs={"random": 5})
    obs, _ = env.reset()
    raw.reset()
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(-1, 1, 6)
        expected = sum(raw.step(a).reward for _ in range(3))
        _, reward, *_ = env.step(a)
        assert reward == pytest.approx(expected, abs=1e-12)


def test_unknown_env_error_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown environment 'cheetah-fly'") as e:
        parse_env_name("cheetah-fly")
    assert "cheetah-run" in str(e.value) and "finger-turn_hard" in str(e.value)
    assert len(available_envs()) > 20


def test_unknown_env_at_the_cli_is_one_line_exit_2(capsys, tmp_path):
    assert main(["train", "--env", "nope-nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown environment 'nope-nope'" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv", [["train", "--steps", "ten"], ["train", "--mitigator", "magic"],
                                  ["train", "--replay-ratio", "-1"], ["train", "--bogus"], ["plot"]])
def test_bad_flags_are_one_line_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
