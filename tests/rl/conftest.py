"""Shared settings for the rl tests: tiny runs through the real DMC path (cheetah-run, action repeat 8 → 125-step
episodes), a small buffer, warm-up 50, replay ratio 1, one evaluation episode, 32-unit networks.

dm_control is a declared dependency of the rl extra: when it is missing these tests fail, they are never skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "disable")  # as rl.envs does; no OpenGL probe in the tests

import dm_control  # noqa: E402,F401  (fail loudly, not skip, if the rl dependencies are missing)
import pytest  # noqa: E402
import torch  # noqa: E402

TINY = dict(env="cheetah-run", action_repeat=8, warmup_steps=50, replay_ratio=1, buffer_size=1000,
            eval_interval=100, eval_episodes=1, checkpoint_interval=250, hidden=32, batch_size=32,
            diagnostic_batch=64, threads=1, progress=False)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
