"""The training run: environment steps, replay-ratio updates, periodic evaluation, metrics and checkpoints.

Reads top to bottom as: config → envs → agent + buffer → (resume) → loop { act, store, RR updates, evaluate,
checkpoint at episode ends } → final checkpoint.

Checkpoints are taken only at episode boundaries (the first one at or after every ``checkpoint_interval`` env
steps, and at the end of a run that ends on one). There the environment's whole state is its task's RandomState,
so a resumed run continues *exactly* as the uninterrupted one would have: same transitions, same updates, same
metrics rows (all columns but ``wall_time_s``). A killed run resumes from its last checkpoint and recomputes the
steps after it; rows of metrics.csv past the checkpoint are dropped first.
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

import specopt

from .buffer import ReplayBuffer
from .config import RESUMABLE_OVERRIDES, Config
from .envs import DMCEnv, make_env
from .sac import SAC, param_norm

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
CONFIG = "config.json"


# --- evaluation and measurement ---------------------------------------------------------------------------------
def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = Σ_k γ^k r_{t+k} within one episode (nothing bootstrapped after its last step)."""
    out = np.zeros(len(rewards), dtype=np.float64)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def evaluate(agent: SAC, env: DMCEnv, cfg: Config) -> dict[str, float]:
    """Deterministic policy (tanh of the mean) for ``eval_episodes`` episodes on the evaluation env.

    Value overestimation: mean Q(s_t, a_t) minus the mean discounted Monte-Carlo return G_t over the visited
    states that have at least H = ⌈log 0.01 / log γ⌉ steps left in the episode (459 for γ = 0.99), so that the
    episode's end cuts off < 1% of the discount weight. The critic bootstraps through time limits, so near the end
    G_t would underestimate; an episode shorter than H uses all its states (G_t then biased low; ``mc_states``
    logs how many states were used). Q is SAC's *soft* value: it also counts the future entropy bonus
    (≈ α·H/(1 − γ)), which G_t does not.
    """
    horizon = math.ceil(math.log(0.01) / math.log(cfg.gamma)) if 0 < cfg.gamma < 1 else 1
    returns, qs, gs = [], [], []
    for _ in range(cfg.eval_episodes):
        obs, _ = env.reset()
        observations, actions, rewards = [], [], []
        done = False
        while not done:
            o = torch.as_tensor(obs, device=agent.device)
            a = agent.actor.act(o, deterministic=True)
            observations.append(o)
            actions.append(a)
            obs, r, terminated, truncated, _ = env.step(a.cpu().numpy())
            rewards.append(r)
            done = terminated or truncated
        rewards_np = np.asarray(rewards)
        returns.append(rewards_np.sum())
        g = discounted_returns(rewards_np, cfg.gamma)
        keep = len(rewards) - horizon if (len(rewards) > horizon and not terminated) else len(rewards)
        q = agent.q_value(torch.stack(observations[:keep]), torch.stack(actions[:keep]))
        qs.append(q.cpu().numpy())
        gs.append(g[:keep])
    q_all, g_all = np.concatenate(qs), np.concatenate(gs)
    return {"eval_return_mean": float(np.mean(returns)), "eval_return_std": float(np.std(returns)),
            "q_eval_mean": float(q_all.mean()), "mc_return_eval": float(g_all.mean()),
            "q_overestimation": float(q_all.mean() - g_all.mean()), "mc_states": len(g_all)}


def diagnostics(agent: SAC, buffer: ReplayBuffer, cfg: Config, step: int) -> dict[str, float]:
    """Mean Q on a replay batch, parameter and gradient norms, per-layer σ1, temperature, last update's losses.

    Runs under ``fork_rng`` with its own seed, so measuring never changes the training run's random stream.
    """
    devices = [agent.device.index or 0] if agent.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        gen = torch.Generator(device=buffer.device).manual_seed(cfg.seed * 1_000_003 + step)
        batch = buffer.sample(min(cfg.diagnostic_batch, max(len(buffer), 1)), gen)
        q = agent.q_value(batch.obs, batch.action)
        grads = agent.grad_norms(batch)
    row: dict[str, float] = {"q_replay_mean": float(q.mean()), **grads,
                             "param_norm_actor": param_norm(agent.actor), "param_norm_critic": param_norm(agent.critic),
                             "alpha": float(agent.alpha)}
    for key in ("entropy", "critic_loss", "actor_loss", "alpha_loss"):
        row[key] = float(agent.info[key]) if key in agent.info else float("nan")
    for net_name, net in (("actor", agent.actor), ("critic", agent.critic)):
        sigmas = {name: float(s) for name, s in specopt.spectral_norms(net).items()}
        row[f"sigma1_{net_name}_mean"] = float(np.mean(list(sigmas.values())))
        row.update({f"sigma1_{net_name}.{name}": s for name, s in sigmas.items()})
    return row


# --- files ------------------------------------------------------------------------------------------------------
def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    os.replace(tmp, path)


def append_metrics(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def resolve_config(cfg: Config, resume: bool, explicit: set[str] | None = None) -> Config:
    """For ``resume``, the saved config with only RESUMABLE_OVERRIDES taken from ``cfg``; a differing other
    setting that was given explicitly (``explicit``; all fields when None) is an error."""
    out = Path(cfg.out)
    if not resume:
        if (out / CHECKPOINT).exists() or (out / METRICS).exists():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        return cfg
    if not (out / CONFIG).exists():
        raise ValueError(f"nothing to resume in {out} (no {CONFIG})")
    saved = Config.from_dict(json.loads((out / CONFIG).read_text()))
    given = cfg.to_dict()
    explicit = set(given) if explicit is None else explicit
    differs = [k for k in explicit if k not in RESUMABLE_OVERRIDES and k != "out" and given[k] != getattr(saved, k)]
    if differs:
        raise ValueError(f"--resume cannot change {', '.join(sorted(differs))} (saved in {out / CONFIG})")
    merged = saved.to_dict()
    merged.update({k: given[k] for k in RESUMABLE_OVERRIDES if k in explicit})
    merged["out"] = cfg.out
    return Config.from_dict(merged)


# --- the run ----------------------------------------------------------------------------------------------------
def train(cfg: Config, resume: bool = False, explicit: set[str] | None = None) -> Path:
    """Run (or resume) one training run; returns its output directory."""
    cfg.validate()
    cfg = resolve_config(cfg, resume, explicit)
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)

    torch.manual_seed(cfg.seed)
    env = make_env(cfg.env, cfg.seed, cfg.action_repeat)
    eval_env = make_env(cfg.env, cfg.seed + cfg.eval_seed_offset, cfg.action_repeat)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    agent = SAC(obs_dim, act_dim, cfg, device)
    buffer = ReplayBuffer(cfg.buffer_size, obs_dim, act_dim, device)
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed)  # replay indices
    action_gen = torch.Generator().manual_seed(cfg.seed + 1)  # uniform warm-up actions

    step, episodes = 0, 0
    recent: deque[float] = deque(maxlen=cfg.recent_episodes)
    next_checkpoint = cfg.checkpoint_interval
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
        agent.load_state_dict(ck["agent"])
        buffer.load_state_dict(ck["buffer"])
        torch.set_rng_state(ck["rng"]["torch"])
        if device.type == "cuda" and ck["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(ck["rng"]["cuda"], device)
        sample_gen.set_state(ck["rng"]["sample"].cpu())
        action_gen.set_state(ck["rng"]["action"])
        env.set_rng_state(ck["rng"]["env"])
        eval_env.set_rng_state(ck["rng"]["eval_env"])
        step, episodes, next_checkpoint = ck["step"], ck["episodes"], ck["next_checkpoint"]
        recent.extend(ck["recent"])
        write_metrics(metrics_path, [r for r in read_metrics(metrics_path) if int(r["step"]) <= step])
    elif resume:  # killed before its first checkpoint: start over
        write_metrics(metrics_path, [])

    def save_checkpoint() -> None:
        atomic_save({"agent": agent.state_dict(), "buffer": buffer.state_dict(),
                     "rng": {"torch": torch.get_rng_state(),
                             "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                             "sample": sample_gen.get_state(), "action": action_gen.get_state(),
                             "env": env.get_rng_state(), "eval_env": eval_env.get_rng_state()},
                     "step": step, "episodes": episodes, "next_checkpoint": next_checkpoint,
                     "recent": list(recent), "config": cfg.to_dict()}, ckpt_path)

    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, desc=f"{cfg.env} {cfg.mitigator}")
    start, updates_at_start, last_return = time.perf_counter(), agent.updates, float("nan")
    obs, _ = env.reset()
    episode_return = 0.0
    while step < cfg.steps:
        if step < cfg.warmup_steps:
            action = torch.rand(act_dim, generator=action_gen) * 2 - 1
        else:
            action = agent.actor.act(torch.as_tensor(obs, device=device), deterministic=False).cpu()
        next_obs, reward, terminated, truncated, _ = env.step(action.numpy())
        buffer.add(obs, action, reward, next_obs, terminated)
        obs, episode_return, step = next_obs, episode_return + reward, step + 1

        if step >= cfg.warmup_steps and cfg.replay_ratio > 0:
            agent.update_block(buffer.sample(cfg.batch_size, sample_gen, blocks=cfg.replay_ratio))

        done = terminated or truncated
        if done:
            recent.append(episode_return)
            last_return, episodes, episode_return = episode_return, episodes + 1, 0.0

        if step % cfg.eval_interval == 0:
            row = {"step": step, "updates": agent.updates, "resets": agent.resets, "episodes": episodes,
                   "train_return_recent": float(np.mean(recent)) if recent else float("nan"),
                   **evaluate(agent, eval_env, cfg), **diagnostics(agent, buffer, cfg, step),
                   "wall_time_s": round(time.perf_counter() - start, 2)}
            append_metrics(metrics_path, row)
            if bar is not None:
                bar.write(f"step {step}: eval return {row['eval_return_mean']:.1f} ± {row['eval_return_std']:.1f}")

        if done:  # an episode boundary: the only place a checkpoint is exact
            if step >= next_checkpoint or step == cfg.steps:
                while next_checkpoint <= step:
                    next_checkpoint += cfg.checkpoint_interval
                save_checkpoint()
            obs, _ = env.reset()

        if bar is not None:
            bar.update(1)
            if step % 100 == 0 or step == cfg.steps:
                rate = (agent.updates - updates_at_start) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(updates_per_s=f"{rate:.0f}", last_return=f"{last_return:.1f}", refresh=False)
    if bar is not None:
        bar.close()
    return out


__all__ = ["train", "evaluate", "diagnostics", "discounted_returns", "resolve_config"]
