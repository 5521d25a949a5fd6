r"""Counter-based random numbers: one independent stream per (agent, purpose), made of tensor ops only.

Agent s's draw number c of stream p is a pure function of (seed_s, p, c, position): an integer hash, so

* an agent trained among N others draws exactly the numbers it draws alone (the vectorized run equals N
  single runs), whatever the other agents are;
* nothing is read from a ``torch.Generator``: a block of updates is one graph of tensor ops that
  ``torch.compile`` / CUDA graphs can capture, and the whole random state of a run is a few integer counters;
* the streams are the same on every device (the hash is exact integer arithmetic in int64).

The hash is three rounds of :math:`h \leftarrow ((h \oplus (h \gg 16)) \cdot \mathrm{0x45D9F3B}) \bmod 2^{32}`
(every product fits in int64); uniforms keep its top 23 bits, :math:`u \in (0, 1)`; normals use Box–Muller;
integers in [0, n) are :math:`\lfloor h n / 2^{32}\rfloor`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

POLICY, REPLAY, ACT, WARMUP, DIAGNOSTIC = range(5)  # the purposes; each has its own key and counter
_MASK = 0xFFFFFFFF
_MUL = 0x45D9F3B


def _mix(h: Tensor | int) -> Tensor | int:
    for _ in range(3):
        h = ((h ^ (h >> 16)) * _MUL) & _MASK
    return h


def keys(seeds: list[int], stream: int, device: torch.device | str = "cpu") -> Tensor:
    """One 32-bit key per agent for ``stream``: (N,) int64."""
    return torch.tensor([_mix((_mix(s & _MASK) + 0x9E3779B9 * (stream + 1)) & _MASK) for s in seeds],
                        dtype=torch.int64, device=device)


def bits(key: Tensor, counter: Tensor | int, n: int) -> Tensor:
    """Draw ``counter`` of each agent's stream: ``n`` 32-bit integers per agent, shape (N, n), int64."""
    j = torch.arange(n, dtype=torch.int64, device=key.device)
    draw = _mix((key + _mix(counter & _MASK if isinstance(counter, int) else counter.to(torch.int64) & _MASK)) & _MASK)
    return _mix((draw[:, None] + j) & _MASK)


def uniform(key: Tensor, counter: Tensor | int, n: int) -> Tensor:
    """``n`` uniforms per agent, shape (N, n), float32: the top 23 bits + ½, so every value is exact and in (0, 1)."""
    return ((bits(key, counter, n) >> 9).to(torch.float32) + 0.5) * (1.0 / 2**23)


def integers(key: Tensor, counter: Tensor | int, n: int, high: Tensor | int) -> Tensor:
    """``n`` integers per agent in [0, high), shape (N, n): ⌊h·high / 2³²⌋, exact in int64 for high < 2³¹ (each
    value has ⌊2³²/high⌋ or one more of the 2³² hashes: uneven by < high/2³², 0.02% for a 1M buffer)."""
    return (bits(key, counter, n) * high) >> 32


def normal(key: Tensor, counter: Tensor | int, shape: tuple[int, ...]) -> Tensor:
    """Standard normals of shape (N, *shape) from draw ``counter`` (Box–Muller on 2·prod(shape) uniforms)."""
    n = math.prod(shape)
    u = uniform(key, counter, 2 * n)
    z = torch.sqrt(-2.0 * torch.log(u[:, :n])) * torch.cos((2.0 * math.pi) * u[:, n:])
    return z.reshape(key.shape[0], *shape)


class Streams:
    """The keys and counters of every purpose for a list of agent seeds; counters are device int64 scalars
    advanced in place, so a captured graph draws fresh numbers on every replay."""

    def __init__(self, seeds: list[int], device: torch.device | str = "cpu") -> None:
        self.keys = [keys(seeds, p, device) for p in range(5)]
        self.counters = [torch.zeros((), dtype=torch.int64, device=device) for _ in range(5)]

    def draw(self, stream: int) -> tuple[Tensor, Tensor]:
        """(key, counter) for the next draw of ``stream``; advances its counter."""
        c = self.counters[stream].clone()
        self.counters[stream].add_(1)
        return self.keys[stream], c

    def normal(self, stream: int, shape: tuple[int, ...]) -> Tensor:
        return normal(*self.draw(stream), shape)

    def uniform(self, stream: int, n: int) -> Tensor:
        return uniform(*self.draw(stream), n)

    def state_dict(self) -> dict:
        return {"counters": [c.clone().cpu() for c in self.counters]}

    def load_state_dict(self, state: dict) -> None:
        for c, saved in zip(self.counters, state["counters"]):
            c.copy_(saved)


__all__ = ["Streams", "bits", "integers", "keys", "normal", "uniform", "POLICY", "REPLAY", "ACT", "WARMUP", "DIAGNOSTIC"]
