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
import signal
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


def rng_state_plain(state: tuple) -> tuple:
    """numpy's ``RandomState.get_state()`` — ('MT19937', 624 uint32 keys, pos, has_gauss, cached_gaussian) — with
    the keys as an int64 tensor (exact: every uint32 fits), so ``torch.load(weights_only=True)`` reads it."""
    import torch  # here, not at the top: the environment workers never import torch

    name, keys, pos, has_gauss, cached = state
    return (str(name), torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss), float(cached))


def rng_state_numpy(state: tuple) -> tuple:
    """The inverse of :func:`rng_state_plain`: the tuple ``RandomState.set_state`` takes."""
    name, keys, pos, has_gauss, cached = state
    keys = keys.numpy() if hasattr(keys, "numpy") else np.asarray(keys)
    return (name, keys.astype(np.uint32), pos, has_gauss, cached)


# --- many environments, stepped in worker processes ---------------------------------------------------------------
def quiet_absl() -> None:
    """dm_control's model compiler logs a deprecation warning through absl on every env; keep the bar readable."""
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def _serve(conn, specs: list[tuple[str, int, int]]) -> None:
    """Worker loop: hosts the environments ``specs`` (name, seed, action_repeat) and answers commands. Ctrl-C (or a
    ``timeout --signal=INT``) goes to the whole process group: the worker ignores it and lets the parent, which
    handles it, close the pipe — a worker whose parent is gone exits quietly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("MUJOCO_GL", "disable")
    quiet_absl()
    envs = [make_env(*spec) for spec in specs]
    while True:
        try:
            command, arg = conn.recv()
        except EOFError:  # the parent is gone
            return
        if command == "close":
            conn.close()
            return
        conn.send(_run(envs, command, arg))


def _run(envs: list[DMCEnv], command: str, arg: Any) -> list:
    """``arg`` is a list of (local index, payload); returns the results in that order."""
    if command == "reset":
        return [envs[i].reset()[0] for i, _ in arg]
    if command == "step":
        return [envs[i].step(a) for i, a in arg]
    if command == "get_rng_state":
        return [envs[i].get_rng_state() for i, _ in arg]
    if command == "set_rng_state":
        for i, state in arg:
            envs[i].set_rng_state(state)
        return [None] * len(arg)
    raise ValueError(f"unknown command {command!r}")


class EnvWorkerDied(RuntimeError):
    """A process stepping environments ended under the run (killed, out of memory); one line naming it."""


class VectorEnv:
    """Environments ``specs`` = [(name, seed, action_repeat), ...] stepped together, spread over ``workers``
    processes (0: in this process). Each call names the environments it addresses, so an evaluation can step only
    the episodes still running. Results are the same whichever process stepped an environment."""

    def __init__(self, specs: list[tuple[str, int, int]], workers: int = 0) -> None:
        self.size = len(specs)
        self.workers = min(workers, self.size)
        if self.workers == 0:
            self._local = [make_env(*spec) for spec in specs]
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # no fork of a process that holds torch threads or a CUDA context
        self._home = [(i % self.workers, i // self.workers) for i in range(self.size)]  # env → (worker, slot)
        self._conns, self._procs = [], []
        for w in range(self.workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_serve, args=(child, specs[w::self.workers]), daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)

    def _call(self, command: str, items: list[tuple[int, Any]]) -> list:
        if self.workers == 0:
            return _run(self._local, command, items)
        per_worker: list[list[tuple[int, Any]]] = [[] for _ in range(self.workers)]
        order: list[list[int]] = [[] for _ in range(self.workers)]
        for k, (i, payload) in enumerate(items):
            w, slot = self._home[i]
            per_worker[w].append((slot, payload))
            order[w].append(k)
        out: list = [None] * len(items)
        w = 0
        try:
            for w, conn in enumerate(self._conns):
                if per_worker[w]:
                    conn.send((command, per_worker[w]))
            for w, conn in enumerate(self._conns):
                if per_worker[w]:
                    for k, result in zip(order[w], conn.recv()):
                        out[k] = result
        except (EOFError, OSError):  # ConnectionResetError, BrokenPipeError: the worker process is gone
            proc = self._procs[w]
            proc.join(timeout=1)
            raise EnvWorkerDied(f"environment worker {w} (pid {proc.pid}) died (exit code {proc.exitcode}); the run "
                                "keeps its last checkpoint: continue with the same command and --resume") from None
        return out

    def reset(self, which: list[int]) -> list[np.ndarray]:
        return self._call("reset", [(i, None) for i in which])

    def step(self, which: list[int], actions) -> list[tuple[np.ndarray, float, bool, bool, dict]]:
        return self._call("step", list(zip(which, actions)))

    def get_rng_state(self) -> list[tuple]:
        """Every environment's RandomState as a plain tuple (``rng_state_plain``): a checkpoint holds no numpy."""
        return [rng_state_plain(s) for s in self._call("get_rng_state", [(i, None) for i in range(self.size)])]

    def set_rng_state(self, states: list[tuple]) -> None:
        self._call("set_rng_state", [(i, rng_state_numpy(s)) for i, s in enumerate(states)])

    def close(self) -> None:
        if self.workers:
            for conn, proc in zip(self._conns, self._procs):
                try:
                    conn.send(("close", None))
                except (BrokenPipeError, OSError):
                    pass
                proc.join(timeout=5)
            self.workers = 0
            self._local = []

    def __enter__(self) -> "VectorEnv":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
__all__ = ["DMCEnv", "EnvWorkerDied", "VectorEnv", "available_envs", "make_env", "parse_env_name"]
