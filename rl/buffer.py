"""Replay buffers of N agents as stacked tensors: ring-buffer writes, all of a block's batches sampled at once."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import streams

FIELDS = ("obs", "action", "reward", "next_obs", "terminated")


class Batch(NamedTuple):
    """Transitions of N agents; every field has leading shape ``(..., N, B)`` — ``(RR, N, B)`` for a block."""

    obs: Tensor  # (..., N, B, obs_dim)
    action: Tensor  # (..., N, B, act_dim), in [-1, 1]
    reward: Tensor  # (..., N, B)
    next_obs: Tensor  # (..., N, B, obs_dim)
    terminated: Tensor  # (..., N, B) 1.0 at a true terminal state (no bootstrap); 0.0 otherwise, incl. time limits

    def select(self, i: int) -> "Batch":
        """Update ``i``'s batch of a block sampled with ``blocks=RR``."""
        return Batch(*(t[i] for t in self))


class ReplayBuffer:
    """One FIFO buffer of ``capacity`` transitions per agent, stored as (N, capacity, ...) tensors on ``device``.

    The agents step together, so every buffer holds the same number of transitions. ``next_obs`` is stored
    explicitly, so the last transition of a truncated episode keeps its true next observation (needed to
    bootstrap through the time limit).
    """

    def __init__(self, agents: int, capacity: int, obs_dim: int, act_dim: int,
                 device: str | torch.device = "cpu") -> None:
        self.agents, self.capacity, self.device = agents, capacity, torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        self.obs = torch.empty(agents, capacity, obs_dim, **f32)
        self.action = torch.empty(agents, capacity, act_dim, **f32)
        self.reward = torch.empty(agents, capacity, **f32)
        self.next_obs = torch.empty(agents, capacity, obs_dim, **f32)
        self.terminated = torch.empty(agents, capacity, **f32)
        self._rows = torch.arange(agents, device=self.device)
        self.ptr = 0  # next slot to write
        self.size = 0
        self.size_t = torch.zeros((), dtype=torch.int64, device=self.device)  # the same, for a captured sample

    def __len__(self) -> int:
        return self.size

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        """One transition per agent: obs (N, obs_dim), action (N, act_dim), reward (N,), next_obs, terminated (N,)."""
        i = self.ptr
        for name, value in zip(FIELDS, (obs, action, reward, next_obs, terminated)):
            getattr(self, name)[:, i] = torch.as_tensor(value, dtype=torch.float32).to(self.device)
        self.ptr = (i + 1) % self.capacity
        if self.size < self.capacity:
            self.size += 1
            self.size_t.fill_(self.size)

    def gather(self, idx: Tensor) -> Batch:
        """Transitions at ``idx`` of shape (..., N, B): agent n's batch comes from agent n's buffer."""
        rows = self._rows.reshape(-1, 1)
        return Batch(*(getattr(self, name)[rows, idx] for name in FIELDS))

    def sample(self, batch_size: int, key: Tensor, counter: Tensor | int, blocks: int | None = None) -> Batch:
        """Uniform indices with replacement from draw ``counter`` of the agents' replay streams (:mod:`rl.streams`);
        ``blocks=RR`` returns RR independent batches, shape (RR, N, B, ...)."""
        rr = 1 if blocks is None else blocks
        idx = streams.integers(key, counter, rr * batch_size, self.size_t)  # (N, RR·B); size as a tensor: a CUDA
        idx = idx.reshape(self.agents, rr, batch_size).transpose(0, 1)  # graph replays it as the buffer grows
        batch = self.gather(idx)
        return batch.select(0) if blocks is None else batch

    def state_dict(self) -> dict:
        """Only the filled part is saved (a 1M buffer is ~0.6 GB per agent for humanoid's 67-dim observations)."""
        n = self.size
        # clone: torch.save writes a view's whole storage, i.e. the full preallocated capacity
        part = {name: getattr(self, name)[:, :n].clone().cpu() for name in FIELDS}
        return {"agents": self.agents, "capacity": self.capacity, "ptr": self.ptr, "size": n, **part}

    def load_state_dict(self, state: dict) -> None:
        if (state["agents"], state["capacity"]) != (self.agents, self.capacity):
            raise ValueError(f"checkpoint buffer holds {state['agents']} agents × {state['capacity']} transitions, "
                             f"expected {self.agents} × {self.capacity}")
        n = state["size"]
        for name in FIELDS:
            getattr(self, name)[:, :n] = state[name].to(self.device)
        self.ptr, self.size = state["ptr"], n
        self.size_t.fill_(n)
