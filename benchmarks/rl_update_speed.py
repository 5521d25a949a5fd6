"""Updates per second: our SAC (rl.sac.SAC) vs a straightforward single-file CleanRL-style SAC of the same sizes.

Both do the same work per update: critic step (n critics, LayerNorm MLPs 2×hidden), Polyak update, actor step and
temperature step on a fresh batch of 256. The CleanRL-style agent is written below the way
cleanrl/sac_continuous_action.py is (numpy indices + tensor conversion per update, ``.item()`` on α, zero_grad /
backward / step with torch's default Adam, a Python loop for the target update, the actor loss also backpropagating
into the critic's weights) except that the actor is updated every step (CleanRL's policy_frequency=2 updates it
twice every other step: the same count). Timed blocks of the two alternate in one process, so machine load affects
both alike; the median over rounds is reported.

    python benchmarks/rl_update_speed.py --threads 1 --rounds 5 --updates 160
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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
    def __init__(self, data: dict[str, np.ndarray], critics: int, hidden: int, batch_size: int):
        self.data, self.batch_size = data, batch_size
        self.actor = CleanActor(hidden)
        self.qfs = [SoftQNetwork(hidden) for _ in range(critics)]
        self.qf_targets = [SoftQNetwork(hidden) for _ in range(critics)]
        for t, q in zip(self.qf_targets, self.qfs):
            t.load_state_dict(q.state_dict())
        self.q_optimizer = torch.optim.Adam([p for q in self.qfs for p in q.parameters()], lr=3e-4)
        self.actor_optimizer = torch.optim.Adam(list(self.actor.parameters()), lr=3e-4)
        self.target_entropy = -ACT_DIM / 2
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.alpha = self.log_alpha.exp().item()
        self.a_optimizer = torch.optim.Adam([self.log_alpha], lr=3e-4)

    def sample(self):
        idx = np.random.randint(0, len(self.data["obs"]), size=self.batch_size)
        return {k: torch.tensor(v[idx]) for k, v in self.data.items()}

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
def rate(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=160, help="updates per timed block (a multiple of --rr)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--rr", type=int, default=16, help="replay ratio: our agent samples this many batches at once")
    p.add_argument("--critics", type=int, default=1)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mitigators", default="none,spectral", help="our agent's variants to time")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)

    n = 20_000
    data = {"obs": np.random.randn(n, OBS_DIM).astype(np.float32),
            "action": np.random.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
            "reward": np.random.randn(n, 1).astype(np.float32),
            "next_obs": np.random.randn(n, OBS_DIM).astype(np.float32),
            "terminated": np.zeros((n, 1), np.float32)}
    buffer = ReplayBuffer(n, OBS_DIM, ACT_DIM)
    buffer.obs[:], buffer.action[:], buffer.next_obs[:] = (torch.from_numpy(data[k]) for k in ("obs", "action", "next_obs"))
    buffer.reward[:], buffer.terminated[:] = torch.from_numpy(data["reward"][:, 0]), 0.0
    buffer.size = n
    gen = torch.Generator().manual_seed(0)

    def ours_fn(agent):
        def run(k):
            for _ in range(k // args.rr):
                agent.update_block(buffer.sample(args.batch_size, gen, blocks=args.rr))
        return run

    clean = CleanRLSAC(data, args.critics, args.hidden, args.batch_size)
    contenders = {"cleanrl-style": lambda k: [clean.update() for _ in range(k)]}
    for m in args.mitigators.split(","):
        cfg = Config(mitigator=m, critics=args.critics, hidden=args.hidden, batch_size=args.batch_size)
        contenders[f"ours ({m})"] = ours_fn(SAC(OBS_DIM, ACT_DIM, cfg))
    for fn in contenders.values():  # warm up (allocator, first-step optimizer state, power-iteration init)
        fn(args.rr)
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            rates[name].append(rate(fn, args.updates))
    base = statistics.median(rates["cleanrl-style"])
    print(f"torch {torch.__version__}, threads {args.threads}, critics {args.critics}, hidden {args.hidden}, "
          f"batch {args.batch_size}, RR {args.rr}, {args.rounds} rounds × {args.updates} updates (median)")
    print("| agent | updates/s | ratio vs cleanrl-style |\n|---|---|---|")
    for name, r in rates.items():
        med = statistics.median(r)
        print(f"| {name} | {med:.1f} | {med / base:.2f}× |")


if __name__ == "__main__":
    main()
