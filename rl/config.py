"""Every hyper-parameter of a run, in one dataclass, with its default and where the default comes from.

Sources (see docs/rl.md; the SAC reference settings and published returns of the team's notes, rl-reference.md):
  paper   Lewandowski et al., ICLR 2025, Section 5.4 and Appendix B ("Reinforcement Learning")
  jaxrl   Kostrikov's jaxrl/jaxrl2 SAC (the lineage of D'Oro et al. and Nikishin et al.)
  D'Oro   D'Oro et al. 2022, "Breaking the Replay Ratio Barrier" (SR-SAC)
  Nikishin Nikishin et al. 2022, "The Primacy Bias in Deep RL"
  BRO     Nauman et al. 2024 (LayerNorm placement)
  CleanRL sac_continuous_action.py (and its PR #414 on the temperature loss)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import specopt
from specopt.experiment import check_device
from specopt.results import run_name

MITIGATORS = ("none", "resets", "spectral", "l2", "l2-init")
WITH_STRENGTH = {"spectral": "spectral_strength", "l2": "l2_strength", "l2-init": "l2_strength"}  # the field each uses


class Agent(NamedTuple):
    """One agent of a run: its mitigator, seed and strength (λ of ``spectral``, ``l2``, ``l2-init``; else None)."""

    mitigator: str
    seed: int
    strength: float | None

class Network(NamedTuple):
    """The shape of every actor and critic MLP (:func:`rl.sac.mlp`): ``layers`` × (Linear(``hidden``) →
    LayerNorm when ``layer_norm`` → ReLU), then the output layer. The networks take these, not the whole
    :class:`Config`."""

    hidden: int
    layers: int
    layer_norm: bool


# The paper's Figure 16 shows seven DMC environments without naming them (Appendix C.8). This set spans easy to
# hard and is drawn from the tasks with public high-replay-ratio SAC references (rl-reference.md).
PAPER7_ENVS = (
    "cheetah-run",  # easy-medium, dense reward
    "finger-turn_hard",  # medium, exploration
    "walker-run",  # medium
    "hopper-hop",  # hard, primacy bias visible
    "quadruped-run",  # hard; no-reset SAC collapses at high RR
    "fish-swim",  # hard; resets help a lot
    "humanoid-run",  # very hard, 21-dim actions
)


@dataclass
class Config:
    # --- run -------------------------------------------------------------------------------------------------
    env: str = "cheetah-run"  # DMC "<domain>-<task>"
    mitigators: tuple[str, ...] = ("none",)  # one agent per mitigator and seed; none = SAC + LayerNorm (the Baseline)
    seeds: tuple[int, ...] = (0,)  # one agent per (mitigator, seed), all trained together in one process
    strengths: tuple[float, ...] = ()  # a grid: one agent per strength for each mitigator that has one
    steps: int = 100_000  # env (agent) steps; each covers `action_repeat` simulator control steps
    out: str = ""  # run directory, one folder <mitigator>-seed<seed> per agent in it; "" = runs/<env>
    device: str = "cpu"  # torch device: cpu, cuda, cuda:1, ...
    threads: int = 0  # torch.set_num_threads (0 = leave torch's default)
    cuda_graphs: bool = True  # on CUDA, replay each block of RR updates (sampling included) as one CUDA graph
    compile: bool = False  # torch.compile the update (slow to compile on CPU, no faster there: docs/rl.md)
    env_workers: int = -1  # processes stepping the environments: 0 = in this process, -1 = one per agent (≤ cores−1)
    progress: bool = True  # tqdm progress bar
    tensorboard: bool = False  # also log every metrics row to TensorBoard (<agent folder>/tensorboard)

    # --- environment -----------------------------------------------------------------------------------------
    action_repeat: int = 1  # rl-reference: 1 for state-based DMC (jaxrl, D'Oro)

    # --- SAC -------------------------------------------------------------------------------------------------
    hidden: int = 256  # paper: 2 layers x 256 for actor and critic
    layers: int = 2  # paper
    layer_norm: bool = True  # paper: every method uses LayerNorm (Dense -> LayerNorm -> ReLU; BRO/RLPD)
    critics: int = 1  # paper: a single critic; 2 = clipped double Q (min), as jaxrl/CleanRL
    actor_lr: float = 3e-4  # jaxrl
    critic_lr: float = 3e-4  # jaxrl
    temperature_lr: float = 3e-4  # jaxrl
    gamma: float = 0.99  # jaxrl / all
    tau: float = 0.005  # jaxrl / all; Polyak update after every gradient step
    batch_size: int = 256  # jaxrl, D'Oro, Nikishin
    replay_ratio: int = 16  # paper (D'Oro): updates of critic, actor, temperature and target per env step
    init_temperature: float = 1.0  # jaxrl / D'Oro / BRO
    target_entropy_scale: float = 0.5  # target entropy = -scale*|A|; jaxrl/D'Oro/BRO (CleanRL, SB3 use 1.0)
    log_std_min: float = -10.0  # jaxrl
    log_std_max: float = 2.0  # jaxrl
    buffer_size: int = 1_000_000  # paper (the bounded variant uses 250_000)
    warmup_steps: int = 10_000  # paper: 10,000 random-policy transitions before learning

    # --- mitigators ------------------------------------------------------------------------------------------
    reset_interval: int = 2_560_000  # updates between full resets (D'Oro: 160k env steps at RR16)
    spectral_strength: float = specopt.DEFAULT_STRENGTH  # decoupled λ of SpectralAdam (docs/rl.md: vs paper 1e-4)
    spectral_k: float = 2  # paper
    spectral_heads: bool = True  # paper: every layer; False leaves the output layers (Q value, mean/log-std) alone
    spectral_pull: str = "two-sided"  # two-sided (the paper's R) or one-sided (only σ1 > 1 and scales > 1 pulled)
    spectral_precondition: bool = False  # the step divided by Adam's sqrt(v̂)+eps (λ on the coupled scale, 1e-4)
    l2_strength: float = 1e-4  # coupled L2 (toward 0 or toward the initialization); paper's baselines, not tuned

    # --- measurement -----------------------------------------------------------------------------------------
    eval_interval: int = 10_000  # env steps (rl-reference: 10k; jaxrl/D'Oro 5k)
    eval_episodes: int = 10  # rl-reference
    eval_seed_offset: int = 42  # evaluation env seeded seed + 42
    recent_episodes: int = 10  # training returns averaged in the log
    diagnostic_batch: int = 1024  # replay samples for mean Q and gradient norms at each evaluation
    checkpoint_interval: int = 10_000  # env steps; taken at the first episode boundary at or after each multiple

    def __post_init__(self) -> None:
        self.out = self.out or f"runs/{self.env}"

    def validate(self) -> None:
        """Raise a one-line ValueError for any inconsistent setting (before anything is written)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        if not self.log_std_min < self.log_std_max:
            raise ValueError(f"--log-std-min ({self.log_std_min}) must be below --log-std-max ({self.log_std_max})")
        if not self.target_entropy_scale >= 0:
            raise ValueError(f"--target-entropy-scale must be >= 0, got {self.target_entropy_scale}")
        if self.spectral_pull not in ("two-sided", "one-sided"):
            raise ValueError(f"--spectral-pull must be two-sided or one-sided, got {self.spectral_pull}")
        if not self.spectral_k > 0:
            raise ValueError(f"--spectral-k must be > 0, got {self.spectral_k}")
        check_device(self.device)
        for m in self.mitigators:
            if m not in MITIGATORS:
                raise ValueError(f"unknown mitigator {m!r}; choose from {', '.join(MITIGATORS)}")
        if not self.mitigators or not self.seeds:
            raise ValueError("give at least one mitigator and one seed")
        if any(not (0 <= x < float("inf")) for x in self.strengths):
            raise ValueError(f"strengths must be finite and >= 0, got {' '.join(map(str, self.strengths))}")
        for name in ("mitigators", "seeds", "strengths"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeats: {' '.join(map(str, values))}")
        if self.env_workers < -1:
            raise ValueError(f"env_workers must be >= -1 (-1 = automatic), got {self.env_workers}")
        positive = ("steps", "action_repeat", "hidden", "layers", "critics", "batch_size", "buffer_size",
                    "eval_interval", "eval_episodes", "reset_interval", "checkpoint_interval", "recent_episodes",
                    "diagnostic_batch")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("replay_ratio", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("actor_lr", "critic_lr", "temperature_lr", "init_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if self.spectral_strength < 0 or self.l2_strength < 0:
            raise ValueError("strengths must be >= 0")
        if self.warmup_steps < 1 and self.replay_ratio > 0:
            raise ValueError("warmup_steps must be >= 1 (the replay buffer must hold a transition before updating)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k != "provenance"}  # config.json's record of code versions, not a setting
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        for name in ("mitigators", "seeds", "strengths"):  # JSON stores tuples as lists
            if isinstance(d.get(name), list):
                d[name] = tuple(d[name])
        return cls(**d)

    @property
    def network(self) -> Network:
        """The networks' settings (``hidden``, ``layers``, ``layer_norm``)."""
        return Network(self.hidden, self.layers, self.layer_norm)

    @property
    def agents(self) -> list[Agent]:
        """Every agent, mitigator-major, then strength, then seed: the order of the stacked agent dimension. A
        mitigator with a strength gets one agent per value of ``strengths`` (its own default when empty)."""
        out = []
        for m in self.mitigators:
            field = WITH_STRENGTH.get(m)
            grid = (self.strengths or (getattr(self, field),)) if field else (None,)
            out += [Agent(m, s, None if x is None else float(x)) for x in grid for s in self.seeds]
        return out

    def agent_name(self, agent: Agent) -> str:
        """The agent's folder (:func:`specopt.results.run_name`, as continual names its runs):
        ``<mitigator>-seed<seed>``, or ``<mitigator>-s<strength>-seed<seed>`` when ``strengths`` is a grid."""
        return run_name(agent.mitigator, agent.strength if self.strengths else None, agent.seed)

    def agent_dict(self, agent: Agent) -> dict:
        """One agent's settings as a single run's config.json (``mitigator``, ``seed`` and its strength field
        instead of the lists)."""
        d = self.to_dict()
        del d["mitigators"], d["seeds"], d["strengths"]
        if agent.strength is not None:
            d[WITH_STRENGTH[agent.mitigator]] = agent.strength
        return {**d, "mitigator": agent.mitigator, "seed": agent.seed}


# Settings that may differ between a run and its --resume (everything else must match the saved config).
RESUMABLE_OVERRIDES = ("steps", "device", "threads", "compile", "cuda_graphs", "progress", "env_workers", "tensorboard")

__all__ = ["Agent", "Config", "MITIGATORS", "Network", "WITH_STRENGTH", "PAPER7_ENVS", "RESUMABLE_OVERRIDES"]
