"""The training run: environment steps, replay-ratio updates, periodic evaluation, metrics and checkpoints.

Reads top to bottom as: config → envs → agent + buffer → (resume) → loop { act, store, RR updates, evaluate,
checkpoint at episode ends } → final checkpoint.

Checkpoints are taken only at episode boundaries (the first one at or after every ``checkpoint_interval`` env
steps, and at the end of a run that ends on one). There the environment's whole state is its task's RandomState,
so a resumed run continues *exactly* as the uninterrupted one would have: same transitions, same updates, same
metrics rows (all columns but ``wall_time_s``). A killed run resumes from its last checkpoint and recomputes the
steps after it; rows of an agent's results.csv past the checkpoint are dropped first.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from specopt.experiment import (PROVENANCE, add_version, append_csv, changed_settings, claim_folder, load_checkpoint,
                                log_scalars, progress_bar, read_csv, save_checkpoint, saved_provenance,
                                tensorboard_writer, write_csv, write_json)
from specopt.results import RUN_ROWS

from . import streams
from .buffer import ReplayBuffer
from .config import RESUMABLE_OVERRIDES, Agent, Config
from .envs import VectorEnv, make_env
from .sac import SAC, per_agent_norm

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
LEGACY_ROWS = "metrics.csv"  # an agent's rows file before runs of both packages were named alike
CONVERT_COMMAND = "python -m rl convert-checkpoint --trust {out}"
"""How a user converts a checkpoint they trust that needs more than ``weights_only`` (docs/security.md)."""


# --- evaluation and measurement ---------------------------------------------------------------------------------
def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = Σ_k γ^k r_{t+k} within one episode (nothing bootstrapped after its last step)."""
    out = np.zeros(len(rewards), dtype=np.float64)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def evaluate(agent: SAC, envs: VectorEnv, which: list[int], cfg: Config) -> list[dict[str, float]]:
    """Deterministic policies (tanh of the mean) for ``eval_episodes`` episodes; agent n on environment
    ``which[n]``, all agents' episodes stepped together. One dict per agent.

    Value overestimation: mean Q(s_t, a_t) minus the mean discounted Monte-Carlo return G_t over the visited
    states that have at least H = ⌈log 0.01 / log γ⌉ steps left in the episode (459 for γ = 0.99), so that the
    episode's end cuts off < 1% of the discount weight. The critic bootstraps through time limits, so near the end
    G_t would underestimate; an episode shorter than H uses all its states (G_t then biased low; ``mc_states``
    logs how many states were used). Q is SAC's *soft* value: it also counts the future entropy bonus
    (≈ α·H/(1 − γ)), which G_t does not.
    """
    n = agent.n
    horizon = math.ceil(math.log(0.01) / math.log(cfg.gamma)) if 0 < cfg.gamma < 1 else 1
    returns: list[list[float]] = [[] for _ in range(n)]
    qs: list[list[np.ndarray]] = [[] for _ in range(n)]
    gs: list[list[np.ndarray]] = [[] for _ in range(n)]
    for _ in range(cfg.eval_episodes):
        obs = np.stack(envs.reset(which))
        trajectory = [([], [], []) for _ in range(n)]  # observations, actions, rewards
        terminal = [False] * n
        active = list(range(n))
        while active:
            o = torch.as_tensor(obs, device=agent.device)
            a = agent.actor.act(o.unsqueeze(1)).squeeze(1)
            a_np = a.cpu().numpy()
            results = envs.step([which[i] for i in active], [a_np[i] for i in active])
            still = []
            for i, (next_obs, r, terminated, truncated, _) in zip(active, results):
                trajectory[i][0].append(obs[i].copy())
                trajectory[i][1].append(a_np[i])
                trajectory[i][2].append(r)
                obs[i] = next_obs
                terminal[i] = terminated
                if not (terminated or truncated):
                    still.append(i)
            active = still
        length = max(len(t[2]) for t in trajectory)
        padded_obs = np.zeros((n, length, obs.shape[1]), np.float32)
        padded_act = np.zeros((n, length, agent.act_dim), np.float32)
        for i, (observations, actions, _) in enumerate(trajectory):
            padded_obs[i, :len(observations)], padded_act[i, :len(actions)] = observations, actions
        q = agent.q_value(torch.as_tensor(padded_obs, device=agent.device),
                          torch.as_tensor(padded_act, device=agent.device)).cpu().numpy()
        for i, (_, _, rewards) in enumerate(trajectory):
            rewards_np = np.asarray(rewards)
            returns[i].append(rewards_np.sum())
            keep = len(rewards) - horizon if (len(rewards) > horizon and not terminal[i]) else len(rewards)
            qs[i].append(q[i, :keep])
            gs[i].append(discounted_returns(rewards_np, cfg.gamma)[:keep])
    out = []
    for i in range(n):
        q_all, g_all = np.concatenate(qs[i]), np.concatenate(gs[i])
        out.append({"eval_return_mean": float(np.mean(returns[i])), "eval_return_std": float(np.std(returns[i])),
                    "q_eval_mean": float(q_all.mean()), "mc_return_eval": float(g_all.mean()),
                    "q_overestimation": float(q_all.mean() - g_all.mean()), "mc_states": len(g_all)})
    return out


def diagnostics(agent: SAC, buffer: ReplayBuffer, cfg: Config, step: int) -> list[dict[str, float]]:
    """Per agent: mean Q on a replay batch, parameter and gradient norms, per-layer σ1 (torch.linalg.matrix_norm),
    temperature, last update's losses.

    The replay batch and the policy noise are draws 3·step, 3·step + 1 and 3·step + 2 of the agents' diagnostic
    streams, so measuring never changes the training run's random streams.
    """
    batch = buffer.sample(min(cfg.diagnostic_batch, max(len(buffer), 1)), agent.streams.keys[streams.DIAGNOSTIC],
                          3 * step)
    q = agent.q_value(batch.obs, batch.action).mean(-1)
    columns: dict[str, Tensor] = {"q_replay_mean": q, **agent.grad_norms(batch, 3 * step + 1),
                                  "param_norm_actor": per_agent_norm(agent.actor_params),
                                  "param_norm_critic": per_agent_norm(agent.critic_params), "alpha": agent.alpha}
    nan = torch.full((agent.n,), float("nan"))
    for key in ("entropy", "critic_loss", "actor_loss", "alpha_loss"):
        columns[key] = agent.info.get(key, nan)
    for net_name, net in (("actor", agent.actor), ("critic", agent.critic)):
        sigmas = {name: torch.linalg.matrix_norm(p.detach(), ord=2) for name, p in net.named_parameters()
                  if p.dim() == 3}
        columns[f"sigma1_{net_name}_mean"] = torch.stack(list(sigmas.values())).mean(0)
        columns.update({f"sigma1_{net_name}.{name}": s for name, s in sigmas.items()})
    table = {key: value.detach().float().cpu().tolist() for key, value in columns.items()}
    return [{key: values[i] for key, values in table.items()} for i in range(agent.n)]


# --- files ------------------------------------------------------------------------------------------------------
def resolve_config(cfg: Config, resume: bool, explicit: set[str] | None = None) -> Config:
    """For ``resume``, the saved config with only RESUMABLE_OVERRIDES taken from ``cfg``; a differing other
    setting that was given explicitly (``explicit``; all fields when None) is an error."""
    out = Path(cfg.out)
    if not resume:
        if (out / CHECKPOINT).exists() or (out / CONFIG).exists():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        return cfg
    if not (out / CONFIG).exists():
        raise ValueError(f"nothing to resume in {out} (no {CONFIG})")
    if any(out.glob(f"*/{LEGACY_ROWS}")):
        raise ValueError(f"{out} holds agent folders of an older version (<mitigator>-s<seed>/{LEGACY_ROWS}): run "
                         f"`python -m rl migrate {out}` once, then resume")
    saved = Config.from_dict(json.loads((out / CONFIG).read_text()))
    given = cfg.to_dict()
    explicit = set(given) if explicit is None else explicit
    differs = changed_settings(saved.to_dict(), {k: given[k] for k in explicit}, ignore={*RESUMABLE_OVERRIDES, "out"})
    if differs:
        raise ValueError(f"--resume cannot change {', '.join(differs)} (saved in {out / CONFIG})")
    merged = saved.to_dict()
    merged.update({k: given[k] for k in RESUMABLE_OVERRIDES if k in explicit})
    merged["out"] = cfg.out
    return Config.from_dict(merged)


def metrics_before(cfg: Config, step: int) -> list[list[dict[str, str]]]:
    """Each agent's results.csv rows up to env step ``step`` (a checkpoint's), checked: one complete row at every
    evaluation step (multiples of ``eval_interval``) up to ``step``. Rows past it are dropped (a resumed run
    recomputes them). A missing, emptied, truncated or garbled file is a one-line ``ValueError`` naming it: those rows
    exist nowhere else."""
    expected = list(range(cfg.eval_interval, step + 1, cfg.eval_interval))
    out = []
    for a in cfg.agents:
        path, kept = agent_dir(cfg, a) / RUN_ROWS, []
        try:
            for r in read_csv(path):  # the complete rows up to the checkpoint; what follows is recomputed
                if None in r.values() or None in r or int(r["step"]) > step:
                    break
                kept.append(r)
        except (KeyError, ValueError, TypeError, OSError, UnicodeDecodeError, csv.Error):
            pass
        if [int(r["step"]) for r in kept] != expected:
            raise ValueError(f"{path} lacks rows the checkpoint at step {step} needs (evaluations at steps "
                             f"{cfg.eval_interval}…{step}): it was deleted, emptied or damaged; restore it from a "
                             "copy, or start the run over in another --out")
        out.append(kept)
    return out


# --- the run ----------------------------------------------------------------------------------------------------
def agent_dir(cfg: Config, agent: Agent) -> Path:
    """Where one agent's config.json and results.csv live: ``<out>/<mitigator>-seed<seed>`` (with a strength grid,
    ``<out>/<mitigator>-s<strength>-seed<seed>``; :meth:`Config.agent_name`)."""
    return Path(cfg.out) / cfg.agent_name(agent)


def env_workers(cfg: Config) -> int:
    """Processes for the 2N environments (training and evaluation): ``env_workers``, or with −1 one per agent up to
    the CPU cores less one (none for a single agent: its simulator is not the bottleneck)."""
    if cfg.env_workers >= 0:
        return cfg.env_workers
    n = len(cfg.agents)
    return 0 if n == 1 else max(0, min(n, (os.cpu_count() or 1) - 1))


def train(cfg: Config, resume: bool = False, explicit: set[str] | None = None) -> list[dict[str, str]]:
    """Run (or resume) the agents ``cfg.agents`` together in ``cfg.out``; returns every agent's metrics rows (agent
    by agent in ``cfg.agents`` order, then by step; as each ``<out>/<agent>/results.csv`` holds them, so a resumed
    run's rows are the uninterrupted run's). ``explicit``: the settings given on the command line, the ones a
    ``resume`` may not change (all when None)."""
    cfg.validate()
    if resume and not Path(cfg.out).is_dir():
        raise ValueError(f"nothing to resume in {cfg.out} (no such folder)")
    with claim_folder(cfg.out, "rl run"):  # one run, one process per folder; a refused run writes nothing
        return _train_in(cfg, resume, explicit)


def _train_in(cfg: Config, resume: bool, explicit: set[str] | None) -> list[dict[str, str]]:
    cfg = resolve_config(cfg, resume, explicit)
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    ckpt_path = Path(cfg.out) / CHECKPOINT
    # read (weights_only: no code in the file runs) before any file is written or a worker started, so that a
    # refused checkpoint leaves the folder as it was
    resuming = resume and ckpt_path.exists()
    ck = load_checkpoint(ckpt_path, CONVERT_COMMAND.format(out=cfg.out), "cpu") if resuming else None
    if ck is not None and cfg.steps < ck["step"]:
        raise ValueError(f"--steps {cfg.steps} is below the checkpoint's step {ck['step']} in {cfg.out}: a resumed "
                         f"run can only go on (give --steps >= {ck['step']})")
    metrics_before(cfg, ck["step"] if ck is not None else 0)  # every agent's rows up to the checkpoint are intact
    agents = cfg.agents
    n = len(agents)
    specs = [(cfg.env, a.seed, cfg.action_repeat) for a in agents]
    specs += [(cfg.env, a.seed + cfg.eval_seed_offset, cfg.action_repeat) for a in agents]
    train_ids, eval_ids = list(range(n)), list(range(n, 2 * n))
    with VectorEnv(specs, env_workers(cfg)) as envs:
        _loop(cfg, ck, device, envs, train_ids, eval_ids)
    return [row for a in agents for row in read_csv(agent_dir(cfg, a) / RUN_ROWS)]


def _loop(cfg: Config, ck: dict | None, device: torch.device, envs: VectorEnv, train_ids: list[int],
          eval_ids: list[int]) -> None:
    agents = cfg.agents
    n = len(agents)
    obs = np.stack(envs.reset(train_ids))
    probe = make_env(cfg.env, 0, cfg.action_repeat)
    obs_dim, act_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    history = saved_provenance(out / CONFIG) if ck is not None else []
    if ck is None or ck["step"] < cfg.steps:  # this process trains: record its code version
        history = add_version(history, cfg.device)
    write_json(out / CONFIG, {**cfg.to_dict(), PROVENANCE: history})
    dirs = [agent_dir(cfg, a) for a in agents]
    for d, a in zip(dirs, agents):
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / CONFIG, {**cfg.agent_dict(a), PROVENANCE: history})
    agent = SAC(obs_dim, act_dim, cfg, device)
    buffer = ReplayBuffer(n, cfg.buffer_size, obs_dim, act_dim, device)

    step, episodes = 0, 0
    recent: list[deque[float]] = [deque(maxlen=cfg.recent_episodes) for _ in range(n)]
    next_checkpoint = cfg.checkpoint_interval
    ckpt_path = out / CHECKPOINT
    if ck is not None:
        agent.load_state_dict(ck["agent"])
        buffer.load_state_dict(ck["buffer"])
        envs.set_rng_state(ck["env_rng"])
        step, episodes, next_checkpoint = ck["step"], ck["episodes"], ck["next_checkpoint"]
        for r, saved in zip(recent, ck["recent"]):
            r.extend(saved)
        obs = np.stack(envs.reset(train_ids))  # at an episode boundary the next reset is the saved one's
    for d, kept in zip(dirs, metrics_before(cfg, step)):  # rows past the checkpoint are recomputed
        write_csv(d / RUN_ROWS, kept)

    def checkpoint() -> None:
        state = {"agent": agent.state_dict(), "buffer": buffer.state_dict(), "env_rng": env_rng, "step": step,
                 "episodes": episodes, "next_checkpoint": next_checkpoint, "recent": [list(r) for r in recent],
                 "config": cfg.to_dict()}
        save_checkpoint(ckpt_path, state)

    boards = [tensorboard_writer(d / "tensorboard") for d in dirs] if cfg.tensorboard else []
    desc = f"{cfg.env} {'+'.join(cfg.mitigators)} × {len(cfg.seeds)} seeds"
    bar = progress_bar(cfg.steps, step, "step", cfg.progress, desc)
    start, updates_at_start = time.perf_counter(), agent.updates
    episode_return = np.zeros(n)
    env_rng: list = []
    while step < cfg.steps:
        if step < cfg.warmup_steps:
            action = agent.streams.uniform(streams.WARMUP, act_dim) * 2 - 1
        else:
            noise = agent.streams.normal(streams.ACT, (1, act_dim))
            action = agent.actor.act(torch.as_tensor(obs, device=device).unsqueeze(1), noise).squeeze(1)
        action_np = action.cpu().numpy()
        results = envs.step(train_ids, action_np)
        next_obs = np.stack([r[0] for r in results])
        reward = np.array([r[1] for r in results])
        terminated = np.array([r[2] for r in results])
        done = terminated | np.array([r[3] for r in results])
        buffer.add(obs, action_np, reward, next_obs, terminated)
        obs, episode_return, step = next_obs, episode_return + reward, step + 1

        if step >= cfg.warmup_steps and cfg.replay_ratio > 0:
            agent.train_block(buffer)

        for i in np.flatnonzero(done):
            recent[i].append(float(episode_return[i]))
            episode_return[i] = 0.0
        if done.all():
            episodes += 1

        if step % cfg.eval_interval == 0:
            evals = evaluate(agent, envs, eval_ids, cfg)
            measured = diagnostics(agent, buffer, cfg, step)
            wall = round(time.perf_counter() - start, 2)
            for i, (a, d) in enumerate(zip(agents, dirs)):
                row = {"mitigator": a.mitigator, "strength": "" if a.strength is None else a.strength,
                       "seed": a.seed, "step": step, "updates": agent.updates,
                       "resets": agent.resets[i], "episodes": episodes,
                       "train_return_recent": float(np.mean(recent[i])) if recent[i] else float("nan"),
                       **evals[i], **measured[i], "wall_time_s": wall}
                append_csv(d / RUN_ROWS, row)
                if boards:
                    log_scalars(boards[i], row, step)
            if cfg.progress:
                returns = " ".join(f"{e['eval_return_mean']:.0f}" for e in evals)
                bar.write(f"step {step}: eval return per agent {returns}")

        if done.all():  # every agent at an episode boundary: the only place a checkpoint is exact
            if step >= next_checkpoint or step == cfg.steps:
                while next_checkpoint <= step:
                    next_checkpoint += cfg.checkpoint_interval
                env_rng = envs.get_rng_state()  # before the resets below: a resumed run repeats them
                checkpoint()
        if done.any():
            obs[done] = np.stack(envs.reset([int(i) for i in np.flatnonzero(done)]))

        bar.update(1)
        if cfg.progress and (step % 100 == 0 or step == cfg.steps):
            rate = n * (agent.updates - updates_at_start) / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(seed_updates_per_s=f"{rate:.0f}", refresh=False)
    bar.close()


__all__ = ["agent_dir", "train", "evaluate", "diagnostics", "discounted_returns", "resolve_config"]
