"""DeepMind Control Suite tasks as gymnasium environments.

A thin wrapper over ``dm_control.suite.load(domain, task, task_kwargs={'random': seed})`` rather than shimmy's
``dm_control/<domain>-<task>-v0``: we need (a) the time limit reported as *truncation* and a real terminal state
(discount 0) as *termination*, (b) the task's random state, which is all the environment state there is at an
episode boundary, for exact checkpoint/resume, and (c) action repeat with summed rewards. shimmy gives (a) too, but
buries (b) under several wrapper layers.

* observations: the suite's dict of arrays flattened (in spec order) to one float32 vector;
* actions: in [-1, 1]^|A|, rescaled affinely to the task's bounds (identity for every suite task);
* ``reset(seed=...)`` re-seeds the task's RandomState; otherwise ``seed`` at construction is honoured;
* ``step`` returns ``(obs, reward, terminated, truncated, info)``; with ``action_repeat`` r > 1 the action is
  applied r times and the rewards are summed (stopping early at the episode's end).
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

os.environ.setdefault("MUJOCO_GL", "disable")  # we never render; skips the OpenGL probe (and its warnings)

from dm_control import suite  # noqa: E402


def available_envs() -> list[str]:
    """Every suite task as ``"<domain>-<task>"`` (e.g. ``cheetah-run``, ``finger-turn_hard``)."""
    return sorted(f"{domain}-{task}" for domain, task in suite.ALL_TASKS)


def parse_env_name(name: str) -> tuple[str, str]:
    """``"cheetah-run"`` → ``("cheetah", "run")``; an unknown name raises one ValueError listing the valid ones."""
    domain, _, task = name.partition("-")
    if (domain, task) not in suite.ALL_TASKS:
        raise ValueError(f"unknown environment {name!r}; available: {', '.join(available_envs())}")
    return domain, task


def _flatten(observation: dict[str, Any]) -> np.ndarray:
    return np.concatenate([np.asarray(v, dtype=np.float32).ravel() for v in observation.values()])


class DMCEnv(gym.Env):
    """One DMC task with flattened float32 observations and actions in [-1, 1] (see the module docstring)."""

    metadata = {"render_modes": []}

    def __init__(self, name: str, seed: int, action_repeat: int = 1) -> None:
        domain, task = parse_env_name(name)
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        self.name = name
        self.action_repeat = action_repeat
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        spec = self._env.action_spec()
        self._low = spec.minimum.astype(np.float64)
        self._high = spec.maximum.astype(np.float64)
        obs_dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        # Control steps per episode, e.g. 1000 for cheetah-run (10 s at 0.01 s); agent steps = ceil(that / repeat).
        self.max_episode_steps = -(-int(self._env._step_limit) // action_repeat)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._env.task._random = np.random.RandomState(seed)
        return _flatten(self._env.reset().observation), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        a = self._low + (a + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        for _ in range(self.action_repeat):
            ts = self._env.step(a)
            reward += ts.reward or 0.0
            if ts.last():
                break
        # dm_control ends every episode with StepType.LAST; discount 0 means a true terminal state, discount 1 the
        # time limit (a truncation: the critic must bootstrap through it).
        terminated = bool(ts.last() and ts.discount == 0.0)
        truncated = bool(ts.last() and not terminated)
        return _flatten(ts.observation), float(reward), terminated, truncated, {}

    # --- checkpointing: at an episode boundary the task's RandomState is the whole environment state ----------
    def get_rng_state(self) -> tuple:
        return self._env.task.random.get_state()

    def set_rng_state(self, state: tuple) -> None:
        self._env.task.random.set_state(state)


def make_env(name: str, seed: int, action_repeat: int = 1) -> DMCEnv:
    return DMCEnv(name, seed, action_repeat)


__all__ = ["DMCEnv", "available_envs", "make_env", "parse_env_name"]
