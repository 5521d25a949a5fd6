"""Replay buffer: preallocated tensors, ring-buffer writes, all of a block's batches sampled at once."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    """Transitions; every field has leading shape ``(..., B)`` — ``(RR, B)`` for a block of RR fresh batches."""

    obs: Tensor  # (..., B, obs_dim)
    action: Tensor  # (..., B, act_dim), in [-1, 1]
    reward: Tensor  # (..., B)
    next_obs: Tensor  # (..., B, obs_dim)
    terminated: Tensor  # (..., B) 1.0 at a true terminal state (no bootstrap); 0.0 otherwise, incl. time limits

    def select(self, i: int) -> "Batch":
        """Update ``i``'s batch of a block sampled with ``blocks=RR``."""
        return Batch(*(t[i] for t in self))


class ReplayBuffer:
    """FIFO buffer of ``capacity`` transitions stored as tensors on ``device`` (1M by default, 250k bounded).

    ``next_obs`` is stored explicitly, so the last transition of a truncated episode keeps its true next
    observation (needed to bootstrap through the time limit).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: str | torch.device = "cpu") -> None:
        self.capacity, self.device = capacity, torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.obs = torch.empty(capacity, obs_dim, **f32)
        self.action = torch.empty(capacity, act_dim, **f32)
        self.reward = torch.empty(capacity, **f32)
        self.next_obs = torch.empty(capacity, obs_dim, **f32)
        self.terminated = torch.empty(capacity, **f32)
        self.ptr = 0  # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward: float, next_obs, terminated: bool) -> None:
        i = self.ptr
        self.obs[i] = torch.as_tensor(obs)
        self.action[i] = torch.as_tensor(action)
        self.reward[i] = reward
        self.next_obs[i] = torch.as_tensor(next_obs)
        self.terminated[i] = float(terminated)
        self.ptr = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator, blocks: int | None = None) -> Batch:
        """Uniform indices with replacement; ``blocks=RR`` returns RR independent batches, shape (RR, B, ...)."""
        shape = (batch_size,) if blocks is None else (blocks, batch_size)
        idx = torch.randint(0, self.size, shape, generator=generator, device=generator.device)
        idx = idx.to(self.device)
        return Batch(self.obs[idx], self.action[idx], self.reward[idx], self.next_obs[idx], self.terminated[idx])

    def state_dict(self) -> dict:
        """Only the filled part is saved (a 1M buffer is ~0.6 GB for humanoid's 67-dim observations)."""
        n = self.size
        # clone: torch.save writes a view's whole storage, i.e. the full preallocated capacity
        part = {name: getattr(self, name)[:n].clone().cpu() for name in ("obs", "action", "reward", "next_obs", "terminated")}
        return {"capacity": self.capacity, "ptr": self.ptr, "size": n, **part}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint buffer capacity {state['capacity']} != {self.capacity}")
        n = state["size"]
        for name in ("obs", "action", "reward", "next_obs", "terminated"):
            getattr(self, name)[:n] = state[name].to(self.device)
        self.ptr, self.size = state["ptr"], n
