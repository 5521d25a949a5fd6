r"""Soft actor-critic (Haarnoja et al., 2018) as run in the paper — for N agents at once.

Every parameter is stacked along a leading *agent* dimension, ``(N, *shape)``, and one batched update trains all
agents: agent n sees only its own batch, parameters, temperature and optimizer state, so it is exactly the agent
it would be alone (one agent is N = 1). Agents may differ in mitigator and seed; the mitigator enters as
per-agent coefficients (the spectral strength λ_n, 0 for the others; the L2 coefficients; which agents reset).

One gradient update on agent n's batch :math:`(s, a, r, s', d)` (d = 1 only at a true terminal state), in jaxrl's
order:

.. math::
    y &= r + \gamma (1 - d)\big(\min_j \bar Q_j(s', a') - \alpha \log\pi(a'|s')\big),\quad a' \sim \pi(\cdot|s')\\
    L_Q &= \textstyle\sum_j \mathrm{mean}_B\,(Q_j(s,a) - y)^2 \qquad\text{(critic step, then } \bar\phi \leftarrow
        \bar\phi + \tau(\phi - \bar\phi))\\
    L_\pi &= \mathrm{mean}_B\,(\alpha \log\pi(\tilde a|s) - \min_j Q_j(s,\tilde a)),\quad \tilde a \sim \pi(\cdot|s)\\
    L_\alpha &= \mathrm{mean}_B\,\alpha\,(-\log\pi(\tilde a|s) - \bar{\mathcal H}),\quad \bar{\mathcal H} = -|A|/2

The temperature loss multiplies by α itself, not log α (CleanRL PR #414); α in L_Q and L_π is the value before
this update's temperature step. The optimizer is :class:`specopt.stacked.StackedSpectralAdam` for every agent
(λ_n = 0 is plain Adam). The policy noise comes from counter-based per-agent streams (:mod:`rl.streams`), so an
update is tensor ops only: no ``.item()``, no generator, capturable as one graph.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import specopt
from specopt import StackedSpectralAdam

from . import streams
from .buffer import Batch, ReplayBuffer
from .config import Config, Network

_LOG2 = math.log(2.0)


class StackedLinear(nn.Module):
    """N independent ``nn.Linear`` layers: weight (N, out, in), bias (N, out); input (N, B, in)."""

    def __init__(self, agents: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(agents, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(agents, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedLayerNorm(nn.Module):
    """N independent ``nn.LayerNorm`` layers: weight and bias (N, dim); input (N, B, dim)."""

    def __init__(self, agents: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(agents, dim))
        self.bias = nn.Parameter(torch.zeros(agents, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addcmul(self.bias.unsqueeze(1), F.layer_norm(x, x.shape[-1:]), self.weight.unsqueeze(1))


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int, layer_norm: bool, agents: int | None = None) -> nn.Sequential:
    """``layers`` × (Linear → LayerNorm → ReLU), then a Linear head with no normalization (BRO/RLPD placement).

    ``agents=None`` builds one ordinary network (the template each agent's initialization is drawn from);
    ``agents=N`` the stacked one, with the same parameter names."""
    linear = nn.Linear if agents is None else (lambda i, o: StackedLinear(agents, i, o))
    norm = nn.LayerNorm if agents is None else (lambda d: StackedLayerNorm(agents, d))
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [linear(d, hidden), norm(hidden) if layer_norm else nn.Identity(), nn.ReLU()]
        d = hidden
    mods.append(linear(d, out_dim))
    return nn.Sequential(*mods)


def tanh_gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    r"""log π(tanh u) for u ~ N(mean, exp(log_std)²), summed over the last dim (change of variables).

    .. math:: \log\pi(a) = \sum_i \log\mathcal N(u_i;\mu_i,\sigma_i) - \log(1-\tanh^2 u_i),\qquad
              \log(1-\tanh^2 u) = 2(\log 2 - u - \mathrm{softplus}(-2u))

    (the right-hand form is exact and stays finite where tanh u rounds to ±1).
    """
    z = (u - mean) / log_std.exp()
    gaussian = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (_LOG2 - u - F.softplus(-2.0 * u))
    return (gaussian - log_det).sum(-1)


class Actor(nn.Module):
    """Tanh-Gaussian policies of N agents: the MLP outputs mean and log-std (clipped, jaxrl)."""

    def __init__(self, agents: int | None, obs_dim: int, act_dim: int, net: Network,
                 log_std: tuple[float, float]) -> None:
        super().__init__()  # agents=None: one agent's ordinary network (the same parameter names)
        self.net = mlp(obs_dim, 2 * act_dim, *net, agents)
        self.log_std_min, self.log_std_max = log_std

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterized action tanh(mean + std·noise) in (-1, 1)^|A| and its log-probability, shape (N, B)."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * noise
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std)

    @torch.no_grad()
    def act(self, obs: Tensor, noise: Tensor | None = None) -> Tensor:
        """tanh(mean) with ``noise=None`` (deterministic), else tanh(mean + std·noise)."""
        mean, log_std = self(obs)
        return torch.tanh(mean if noise is None else mean + log_std.exp() * noise)


class Critic(nn.Module):
    """``critics`` independent Q-networks per agent on [s, a]; ``forward`` returns shape (critics, N, B)."""

    def __init__(self, agents: int | None, obs_dim: int, act_dim: int, net: Network, critics: int) -> None:
        super().__init__()  # agents=None: one agent's ordinary networks (the same parameter names)
        self.qs = nn.ModuleList(mlp(obs_dim + act_dim, 1, *net, agents) for _ in range(critics))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([q(x).squeeze(-1) for q in self.qs])


def roles(module: nn.Module, single: nn.Module, spectral_heads: bool, regularized: bool) -> list[str]:
    """specopt roles of the stacked network ``module``'s parameters: the roles :func:`specopt.named_roles` gives the
    same-named parameters of ``single``, the single-agent network each agent is (Linear weights are matrices, biases
    go to 0, LayerNorm scales to 1); the output layer of each MLP (the last module of its ``Sequential``) ``none``
    unless ``spectral_heads``; all ``none`` when no agent is regularized (the optimizer is then plain Adam and skips
    the power iterations)."""
    names = [name for name, _ in module.named_parameters()]
    if not regularized:
        return ["none"] * len(names)
    heads = {} if spectral_heads else {f"{name}.{len(seq) - 1}.*": "none" for name, seq in single.named_modules()
                                       if isinstance(seq, nn.Sequential)}
    named = {name: role for name, _, role in specopt.named_roles(single, heads)}
    return [named[name] for name in names]


def _column(x: Tensor, like: Tensor) -> Tensor:
    return x.reshape(-1, *([1] * (like.dim() - 1)))


class SAC:
    """Networks, optimizers and the update rule of the agents ``cfg.agents`` (mitigator-major, strength, seed)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: str | torch.device = "cpu") -> None:
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.device = dev = torch.device(device)
        self.agents = cfg.agents
        n = self.n = len(self.agents)
        self.target_entropy = -cfg.target_entropy_scale * act_dim
        self.streams = streams.Streams([a.seed for a in self.agents], dev)

        def coefficient(name: str) -> Tensor:
            return torch.tensor([a.strength if a.mitigator == name else 0.0 for a in self.agents], device=dev)

        self.strength = coefficient("spectral")
        self.l2 = coefficient("l2")  # coupled loss + λ‖θ‖²: g += 2λθ (as in continual)
        self.l2_init = coefficient("l2-init")  # coupled loss + λ‖θ − θ0‖²: g += 2λ(θ − θ0)
        self.resetting = [a.mitigator == "resets" for a in self.agents]
        self.coupled = bool(self.l2.any() or self.l2_init.any())

        actor_args = (obs_dim, act_dim, cfg.network, (cfg.log_std_min, cfg.log_std_max))
        critic_args = (obs_dim, act_dim, cfg.network, cfg.critics)
        self.actor = Actor(n, *actor_args).to(dev)
        self.critic = Critic(n, *critic_args).to(dev)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.full((n,), math.log(cfg.init_temperature), device=dev))
        self.actor_params = list(self.actor.parameters())
        self.critic_params = list(self.critic.parameters())
        self.target_params = list(self.target.parameters())
        self.init_params = [torch.empty_like(p) for p in self.actor_params + self.critic_params]
        self.resets = [0] * n
        self.updates = 0  # gradient updates so far (drives the resets schedule)
        self._initialize([True] * n)
        regularized = bool(self.strength.any())
        opt = dict(strength=self.strength, k=cfg.spectral_k, pull=cfg.spectral_pull,
                   precondition=cfg.spectral_precondition)
        with torch.device("meta"):  # one agent's networks, shapes only (no memory, no draw from torch's generator)
            actor, critic = Actor(None, *actor_args), Critic(None, *critic_args)
        heads = cfg.spectral_heads
        self.actor_opt = StackedSpectralAdam(self.actor_params, roles(self.actor, actor, heads, regularized),
                                             cfg.actor_lr, **opt)
        self.critic_opt = StackedSpectralAdam(self.critic_params, roles(self.critic, critic, heads, regularized),
                                              cfg.critic_lr, **opt)
        self.alpha_opt = StackedSpectralAdam([self.log_alpha], ["none"], cfg.temperature_lr, strength=0.0)
        self.info: dict[str, Tensor] = {}  # last update's per-agent losses, (N,) device tensors
        self._update = torch.compile(self._update_tensors) if cfg.compile else self._update_tensors
        # CUDA graph of one block (sample RR batches + RR updates); resets must fall on block ends to replay it
        self._graphs = (dev.type == "cuda" and cfg.cuda_graphs and cfg.replay_ratio > 0
                        and (not any(self.resetting) or cfg.reset_interval % cfg.replay_ratio == 0))
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_blocks = 0

    # --- initialization and resets ----------------------------------------------------------------------------
    @torch.no_grad()
    def _initialize(self, which: list[bool]) -> None:
        """Draw fresh networks for the agents in ``which``: agent n's are torch's default initialization of the
        single-agent networks under seed (seed_n, resets_n), the same whichever other agents share the run."""
        cfg = self.cfg
        for i, (agent, fresh) in enumerate(zip(self.agents, which)):
            if not fresh:
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(agent.seed * 1_000_003 + self.resets[i])
                actor = mlp(self.obs_dim, 2 * self.act_dim, *cfg.network)
                critics = [mlp(self.obs_dim + self.act_dim, 1, *cfg.network) for _ in range(cfg.critics)]
            singles = list(actor.parameters()) + [p for q in critics for p in q.parameters()]
            for p, t, p0, q in zip(self.actor_params + self.critic_params,
                                   [None] * len(self.actor_params) + self.target_params, self.init_params, singles):
                p[i].copy_(q)
                p0[i].copy_(q)
                if t is not None:
                    t[i].copy_(q)
            self.log_alpha[i].fill_(math.log(cfg.init_temperature))

    def reset(self, which: list[bool]) -> None:
        """The resets baseline for the agents in ``which``: fresh actor, critic, target, temperature, optimizers."""
        self.resets = [r + int(w) for r, w in zip(self.resets, which)]
        self._initialize(which)
        for opt in (self.actor_opt, self.critic_opt, self.alpha_opt):
            opt.reset(which)

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    # --- the update -------------------------------------------------------------------------------------------
    def _step(self, loss: Tensor, params: list[Tensor], opt: StackedSpectralAdam, init: list[Tensor] | None) -> None:
        """``loss`` is the sum of the agents' losses: its gradient on agent n's slice is agent n's gradient."""
        grads = torch.autograd.grad(loss, params)  # only these parameters' gradients are computed
        if init is not None and self.coupled:  # ∇ of λ‖θ‖² and λ‖θ − θ0‖² (docs/mitigators.md)
            grads = [g + _column(2 * self.l2, p) * p.detach() + _column(2 * self.l2_init, p) * (p.detach() - p0)
                     for g, p, p0 in zip(grads, params, init)]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    @torch.no_grad()
    def td_target(self, b: Batch, alpha: Tensor, noise: Tensor) -> Tensor:
        """y = r + γ(1 − terminated)(min_j Q̄_j(s', a') − α log π(a'|s')), a' = tanh(μ + σ·noise) at the *next*
        observations. ``terminated`` is 0 at a time limit, so truncated episodes bootstrap. Shape (N, B)."""
        next_action, next_log_prob = self.actor.sample(b.next_obs, noise)
        next_q = self.target(b.next_obs, next_action).min(0).values
        return b.reward + self.cfg.gamma * (1.0 - b.terminated) * (next_q - alpha[:, None] * next_log_prob)

    def _update_tensors(self, b: Batch) -> None:
        cfg = self.cfg
        alpha = self.alpha
        n_actor = len(self.actor_params)
        shape = (b.obs.shape[-2], self.act_dim)

        y = self.td_target(b, alpha, self.streams.normal(streams.POLICY, shape))
        critic_loss = (self.critic(b.obs, b.action) - y).pow(2).mean(-1).sum(0)
        self._step(critic_loss.sum(), self.critic_params, self.critic_opt, self.init_params[n_actor:])

        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.critic_params, cfg.tau)

        action, log_prob = self.actor.sample(b.obs, self.streams.normal(streams.POLICY, shape))
        actor_loss = (alpha[:, None] * log_prob - self.critic(b.obs, action).min(0).values).mean(-1)
        self._step(actor_loss.sum(), self.actor_params, self.actor_opt, self.init_params[:n_actor])

        log_prob = log_prob.detach()
        alpha_loss = self.log_alpha.exp() * (-log_prob - self.target_entropy).mean(-1)  # α, not log α (PR #414)
        self._step(alpha_loss.sum(), [self.log_alpha], self.alpha_opt, None)

        self.info = {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                     "alpha_loss": alpha_loss.detach(), "entropy": -log_prob.mean(-1)}

    def update(self, b: Batch) -> None:
        """One gradient update of every agent's critic, target, actor and temperature on its batch in ``b``
        (fields (N, B, ...)); then the resets that fall due."""
        self._update(b)
        self.updates += 1
        if any(self.resetting) and self.updates % self.cfg.reset_interval == 0:
            self.reset(self.resetting)

    def update_block(self, batches: Batch) -> None:
        """RR updates, update i on ``batches.select(i)`` (fields (RR, N, B, ...)): a fresh batch every update."""
        for i in range(batches.reward.shape[0]):
            self.update(batches.select(i))

    def _block_tensors(self, buffer: ReplayBuffer) -> None:
        batches = buffer.sample(self.cfg.batch_size, *self.streams.draw(streams.REPLAY), blocks=self.cfg.replay_ratio)
        for i in range(self.cfg.replay_ratio):
            self._update(batches.select(i))

    def train_block(self, buffer: ReplayBuffer) -> None:
        """One environment step's learning: RR fresh batches per agent from ``buffer`` and RR updates.

        On CUDA (``cuda_graphs``) the block — sampling included — is captured once as a CUDA graph after three
        warm-up blocks and then replayed: no host synchronisation and one launch per block. Blocks right after a
        reset or a load (the power iteration's first, longer step) run eagerly; resets fall on block ends.
        """
        rr = self.cfg.replay_ratio
        if not self._graphs:
            self.update_block(buffer.sample(self.cfg.batch_size, *self.streams.draw(streams.REPLAY), blocks=rr))
            return
        fresh = any(opt.fresh for opt in (self.actor_opt, self.critic_opt, self.alpha_opt))
        if self._graph is not None and not fresh:
            self._graph.replay()
            self.info = self._graph_info
        elif fresh or self._eager_blocks < 3:
            side = torch.cuda.Stream(self.device)  # warm-up on a side stream, as CUDA graph capture requires
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._block_tensors(buffer)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_blocks += 1
        else:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):  # records the block without running it
                    self._block_tensors(buffer)
            except RuntimeError as e:  # keep training, eagerly, rather than lose the run
                warnings.warn(f"CUDA graph capture failed, training without graphs: {str(e).splitlines()[0]}")
                self._graphs = False
                self.update_block(buffer.sample(self.cfg.batch_size, *self.streams.draw(streams.REPLAY), blocks=rr))
                return
            self._graph, self._graph_info = graph, self.info  # the graph's outputs, rewritten by every replay
            self._graph.replay()
        before, self.updates = self.updates, self.updates + rr
        if any(self.resetting) and self.updates // self.cfg.reset_interval > before // self.cfg.reset_interval:
            self.reset(self.resetting)

    # --- measurement ------------------------------------------------------------------------------------------
    def grad_norms(self, b: Batch, draw: int) -> dict[str, Tensor]:
        """Per agent (N,): L2 norms of the critic and actor loss gradients on ``b`` (no optimizer step). The policy
        noise is draws ``draw`` and ``draw + 1`` of the diagnostic stream: training's streams are untouched."""
        shape = (b.obs.shape[-2], self.act_dim)
        key = self.streams.keys[streams.DIAGNOSTIC]
        y = self.td_target(b, self.alpha, streams.normal(key, draw, shape))
        critic_loss = (self.critic(b.obs, b.action) - y).pow(2).mean(-1).sum(0)
        g_critic = torch.autograd.grad(critic_loss.sum(), self.critic_params)
        action, log_prob = self.actor.sample(b.obs, streams.normal(key, draw + 1, shape))
        actor_loss = (self.alpha[:, None] * log_prob - self.critic(b.obs, action).min(0).values).mean(-1)
        g_actor = torch.autograd.grad(actor_loss.sum(), self.actor_params)
        return {"grad_norm_critic": per_agent_norm(g_critic), "grad_norm_actor": per_agent_norm(g_actor)}

    @torch.no_grad()
    def q_value(self, obs: Tensor, action: Tensor) -> Tensor:
        """min_j Q_j(s, a), the value the actor maximizes; shape (N, B)."""
        return self.critic(obs, action).min(0).values

    # --- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "target": self.target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "init_params": [p.clone() for p in self.init_params],
                "streams": self.streams.state_dict(), "updates": self.updates, "resets": list(self.resets)}

    @torch.no_grad()
    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.critic.load_state_dict(s["critic"])
        self.target.load_state_dict(s["target"])
        self.log_alpha.copy_(s["log_alpha"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        self.alpha_opt.load_state_dict(s["alpha_opt"])
        for p, q in zip(self.init_params, s["init_params"]):
            p.copy_(q)
        self.streams.load_state_dict(s["streams"])
        self.updates, self.resets = s["updates"], list(s["resets"])


def per_agent_norm(tensors) -> Tensor:
    """The L2 norm over all ``tensors`` (each (N, ...)) of each agent's slices: shape (N,)."""
    return torch.stack([t.detach().flatten(1).pow(2).sum(1) for t in tensors]).sum(0).sqrt()


__all__ = ["SAC", "Actor", "Critic", "StackedLayerNorm", "StackedLinear", "mlp", "per_agent_norm", "roles",
           "tanh_gaussian_log_prob"]
