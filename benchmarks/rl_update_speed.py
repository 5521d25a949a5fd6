"""Seed-updates per second: N agents vectorized in one process (rl.sac.SAC with N agents) against the same N agents
updated one after another (N single-agent SACs), and a straightforward single-file CleanRL-style SAC of the same
sizes. The last line printed is the vectorized / sequential ratio.

The agents are half ``none`` and half ``spectral`` (per-agent strength: one batch for both). Every contender does
the same work per update: critic step (n critics, LayerNorm MLPs 2×hidden), Polyak update, actor step and
temperature step on a fresh batch of 256. The CleanRL-style agent is written below the way
cleanrl/sac_continuous_action.py is (numpy indices + tensor conversion per update, ``.item()`` on α, zero_grad /
backward / step with torch's default Adam, a Python loop for the target update, the actor loss also backpropagating
into the critic's weights) except that the actor is updated every step (CleanRL's policy_frequency=2 updates it
twice every other step: the same count). Timed blocks of the two alternate in one process, so machine load affects
both alike; the median over rounds is reported.

    python benchmarks/rl_update_speed.py --agents 8 --threads 1 --rounds 5 --updates 160
    python benchmarks/rl_update_speed.py --agents 64 --device cuda --compile   # on a GPU
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rl import streams
from rl.buffer import ReplayBuffer
from rl.config import Config
from rl.sac import SAC

OBS_DIM, ACT_DIM = 17, 6  # cheetah-run
LOG_STD_MAX, LOG_STD_MIN = 2, -10


# ---------------------------------------------------------------- CleanRL-style SAC (single file, as written there)
def _mlp(i, o, h):
    return nn.Sequential(nn.Linear(i, h), nn.LayerNorm(h), nn.ReLU(), nn.Linear(h, h), nn.LayerNorm(h), nn.ReLU(),
                         nn.Linear(h, o))


class SoftQNetwork(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.net = _mlp(OBS_DIM + ACT_DIM, 1, h)

    def forward(self, x, a):
        return self.net(torch.cat([x, a], 1))


class CleanActor(nn.Module):
    def __init__(self, h):
        super().__init__()
        self.net = _mlp(OBS_DIM, 2 * ACT_DIM, h)

    def get_action(self, x):
        mean, log_std = self.net(x).chunk(2, -1)
        log_std = torch.tanh(log_std)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        log_prob = normal.log_prob(x_t) - torch.log(1 - y_t.pow(2) + 1e-6)
        return y_t, log_prob.sum(1, keepdim=True)


class CleanRLSAC:
    def __init__(self, data: dict[str, np.ndarray], critics: int, hidden: int, batch_size: int, device="cpu"):
        self.data, self.batch_size, self.device = data, batch_size, device
        self.actor = CleanActor(hidden).to(device)
        self.qfs = [SoftQNetwork(hidden).to(device) for _ in range(critics)]
        self.qf_targets = [SoftQNetwork(hidden).to(device) for _ in range(critics)]
        for t, q in zip(self.qf_targets, self.qfs):
            t.load_state_dict(q.state_dict())
        self.q_optimizer = torch.optim.Adam([p for q in self.qfs for p in q.parameters()], lr=3e-4)
        self.actor_optimizer = torch.optim.Adam(list(self.actor.parameters()), lr=3e-4)
        self.target_entropy = -ACT_DIM / 2
        self.log_alpha = torch.zeros(1, requires_grad=True, device=device)
        self.alpha = self.log_alpha.exp().item()
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=3e-4)

    def sample(self):
        idx = np.random.randint(0, len(self.data["obs"]), size=self.batch_size)
        return {k: torch.tensor(v[idx]).to(self.device) for k, v in self.data.items()}

    def update(self):
        data = self.sample()
        with torch.no_grad():
            next_actions, next_log_pi = self.actor.get_action(data["next_obs"])
            min_qf_next = torch.min(torch.stack([t(data["next_obs"], next_actions) for t in self.qf_targets]), 0).values
            min_qf_next = min_qf_next - self.alpha * next_log_pi
            next_q = data["reward"].flatten() + (1 - data["terminated"].flatten()) * 0.99 * min_qf_next.view(-1)
        qf_loss = sum(F.mse_loss(q(data["obs"], data["action"]).view(-1), next_q) for q in self.qfs)
        self.q_optimizer.zero_grad()
        qf_loss.backward()
        self.q_optimizer.step()
        for q, t in zip(self.qfs, self.qf_targets):
            for param, target_param in zip(q.parameters(), t.parameters()):
                target_param.data.copy_(0.005 * param.data + (1 - 0.005) * target_param.data)
        pi, log_pi = self.actor.get_action(data["obs"])
        min_qf_pi = torch.min(torch.stack([q(data["obs"], pi) for q in self.qfs]), 0).values
        actor_loss = ((self.alpha * log_pi) - min_qf_pi).mean()
        self.actor_optimizer.zero_grad()
        actor_loss.backward()
        self.actor_optimizer.step()
        with torch.no_grad():
            _, log_pi = self.actor.get_action(data["obs"])
        alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
        self.a_optimizer.zero_grad()
        alpha_loss.backward()
        self.a_optimizer.step()
        self.alpha = self.log_alpha.exp().item()


# ---------------------------------------------------------------- timing
def profile_block(agent: SAC, buffer: ReplayBuffer, rr: int, device: torch.device) -> None:
    """Kernels launched by one eager block of ``rr`` updates of the vectorized agent: their count and the top ten by
    device time (on a GPU a replayed graph still runs each of them; their number bounds the speed)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    batch = buffer.sample(agent.cfg.batch_size, *agent.streams.draw(streams.REPLAY), blocks=rr)
    with profile(activities=activities) as prof:
        agent.update_block(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    if device.type == "cuda":
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e3
        print(f"profile: one eager block of {rr} updates launches {len(kernels)} kernels "
              f"({len(kernels) / rr:.0f} per update), {busy:.2f} ms of kernel time")
        print(events.table(sort_by="self_device_time_total", row_limit=12))
    else:
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--agents", type=int, default=8, help="N: agents vectorized, and agents updated in sequence")
    p.add_argument("--updates", type=int, default=160, help="updates per timed block (a multiple of --rr)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rr", type=int, default=16, help="replay ratio: batches sampled at once")
    p.add_argument("--critics", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the update")
    p.add_argument("--no-cuda-graphs", action="store_true", help="on CUDA, launch every kernel (no graph replay)")
    p.add_argument("--no-cleanrl", action="store_true", help="skip the CleanRL-style reference")
    p.add_argument("--no-sequential", action="store_true", help="skip the N single agents (slow for large N)")
    p.add_argument("--profile", action="store_true",
                   help="also print the kernels of one eager vectorized block (torch.profiler): count and top times")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    n = 20_000
    data = {"obs": np.random.randn(n, OBS_DIM).astype(np.float32),
            "action": np.random.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
            "reward": np.random.randn(n, 1).astype(np.float32),
            "next_obs": np.random.randn(n, OBS_DIM).astype(np.float32),
            "terminated": np.zeros((n, 1), np.float32)}

    def buffer_for(agents: int) -> ReplayBuffer:
        buffer = ReplayBuffer(agents, n, OBS_DIM, ACT_DIM, device)
        for name in ("obs", "action", "next_obs"):
            getattr(buffer, name)[:] = torch.from_numpy(data[name]).to(device)
        buffer.reward[:], buffer.terminated[:] = torch.from_numpy(data["reward"][:, 0]).to(device), 0.0
        buffer.size = n
        return buffer

    mitigators = ["none"] * (args.agents - args.agents // 2) + ["spectral"] * (args.agents // 2)
    settings = dict(critics=args.critics, hidden=args.hidden, batch_size=args.batch_size, compile=args.compile,
                    device=args.device, replay_ratio=args.rr, cuda_graphs=not args.no_cuda_graphs)

    def runner(agent: SAC, buffer: ReplayBuffer):
        def run(k):
            for _ in range(k // args.rr):
                agent.train_block(buffer)  # as in training: one CUDA graph per block on CUDA
            sync()
        return run

    vectorized = SAC(OBS_DIM, ACT_DIM, Config(mitigators=("none", "spectral"), seeds=tuple(range(args.agents // 2)),
                                              **settings), device) if args.agents % 2 == 0 else None
    if vectorized is None:
        raise SystemExit("--agents must be even (half none, half spectral)")
    singles = [] if args.no_sequential else [
        SAC(OBS_DIM, ACT_DIM, Config(mitigators=(m,), seeds=(i,), **settings), device) for i, m in enumerate(mitigators)]
    one_buffer = buffer_for(1)
    big_buffer = buffer_for(args.agents)
    contenders = {f"vectorized (N = {args.agents})": (runner(vectorized, big_buffer), args.agents)}
    if not args.no_sequential:
        contenders[f"sequential ({args.agents} × N = 1)"] = (
            lambda k: [runner(a, one_buffer)(k) for a in singles], args.agents)
    if not args.no_cleanrl:
        clean = CleanRLSAC(data, args.critics, args.hidden, args.batch_size, device)
        contenders["cleanrl-style (1 agent)"] = (lambda k: ([clean.update() for _ in range(k)], sync()), 1)
    for fn, _ in contenders.values():  # warm up (allocator, optimizer state, power iteration, CUDA graph capture)
        fn(5 * args.rr)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, (fn, agents) in contenders.items():
            rates[name].append(agents * rate(fn, args.updates))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {name}, threads {args.threads}, critics {args.critics}, hidden "
          f"{args.hidden}, batch {args.batch_size}, RR {args.rr}, compile {args.compile}, "
          f"{args.rounds} rounds × {args.updates} updates per agent (median)")
    print("| contender | seed-updates/s |\n|---|---|")
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in med.items():
        print(f"| {name} | {r:.1f} |")
    first, *others = med
    for name in sorted(others, key=lambda n: n.startswith("sequential")):  # the sequential ratio last
        print(f"vectorized / {name.split(' (')[0]}: {med[first] / med[name]:.2f}×")
    if args.profile:
        profile_block(vectorized, big_buffer, args.rr, device)


if __name__ == "__main__":
    main()
