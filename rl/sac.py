r"""Soft actor-critic (Haarnoja et al., 2018) as run in the paper: LayerNorm MLPs, tanh-Gaussian policy, automatic
temperature, Polyak-averaged target critic, and an optimizer chosen by the mitigator.

One gradient update on a batch :math:`(s, a, r, s', d)` (d = 1 only at a true terminal state), in jaxrl's order:

.. math::
    y &= r + \gamma (1 - d)\big(\min_j \bar Q_j(s', a') - \alpha \log\pi(a'|s')\big),\quad a' \sim \pi(\cdot|s')\\
    L_Q &= \textstyle\sum_j \mathrm{mean}_B\,(Q_j(s,a) - y)^2 \qquad\text{(critic step, then } \bar\phi \leftarrow
        \bar\phi + \tau(\phi - \bar\phi))\\
    L_\pi &= \mathrm{mean}_B\,(\alpha \log\pi(\tilde a|s) - \min_j Q_j(s,\tilde a)),\quad \tilde a \sim \pi(\cdot|s)\\
    L_\alpha &= \mathrm{mean}_B\,\alpha\,(-\log\pi(\tilde a|s) - \bar{\mathcal H}),\quad \bar{\mathcal H} = -|A|/2

The temperature loss multiplies by α itself, not log α (CleanRL PR #414); α in L_Q and L_π is the value before
this update's temperature step. Updates never call ``.item()``: losses stay on the device until logging.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

import specopt

from .buffer import Batch
from .config import Config

_LOG2 = math.log(2.0)


def mlp(in_dim: int, out_dim: int, hidden: int, layers: int, layer_norm: bool) -> nn.Sequential:
    """``layers`` × (Linear → LayerNorm → ReLU), then a Linear head with no normalization (BRO/RLPD placement)."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LayerNorm(hidden) if layer_norm else nn.Identity(), nn.ReLU()]
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


def tanh_gaussian_log_prob(u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    r"""log π(tanh u) for u ~ N(mean, exp(log_std)²), summed over the last dim (change of variables).

    .. math:: \log\pi(a) = \sum_i \log\mathcal N(u_i;\mu_i,\sigma_i) - \log(1-\tanh^2 u_i),\qquad
              \log(1-\tanh^2 u) = 2(\log 2 - u - \mathrm{softplus}(-2u))

    (the right-hand form is exact and stays finite where tanh u rounds to ±1).
    """
    z = (u - mean) / log_std.exp()
    gaussian = -0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (_LOG2 - u - nn.functional.softplus(-2.0 * u))
    return (gaussian - log_det).sum(-1)


class Actor(nn.Module):
    """Tanh-Gaussian policy: the MLP outputs mean and log-std (clipped to [log_std_min, log_std_max], jaxrl)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * act_dim, cfg.hidden, cfg.layers, cfg.layer_norm)
        self.log_std_min, self.log_std_max = cfg.log_std_min, cfg.log_std_max

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        return mean, log_std.clamp(self.log_std_min, self.log_std_max)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Reparameterized action in (-1, 1)^|A| and its log-probability, shape (B,)."""
        mean, log_std = self(obs)
        u = mean + log_std.exp() * torch.randn_like(mean)
        return torch.tanh(u), tanh_gaussian_log_prob(u, mean, log_std)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool) -> Tensor:
        mean, log_std = self(obs)
        return torch.tanh(mean if deterministic else mean + log_std.exp() * torch.randn_like(mean))


class Critic(nn.Module):
    """``n`` independent Q-networks on [s, a]; ``forward`` returns shape (n, B)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config) -> None:
        super().__init__()
        self.qs = nn.ModuleList(
            mlp(obs_dim + act_dim, 1, cfg.hidden, cfg.layers, cfg.layer_norm) for _ in range(cfg.critics)
        )

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        x = torch.cat([obs, action], dim=-1)
        return torch.stack([q(x).squeeze(-1) for q in self.qs])


def make_optimizer(module: nn.Module, lr: float, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    """Adam for every mitigator; SpectralAdam (decoupled spectral step) for ``spectral``; coupled L2 for ``l2``."""
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    if cfg.mitigator == "spectral":
        # The output layer is the last Linear of each MLP (module index 3·layers in the Sequential).
        heads = {} if cfg.spectral_heads else {f"*{3 * cfg.layers}.weight": "none", f"*{3 * cfg.layers}.bias": "none"}
        groups = specopt.param_groups(module, strength=cfg.spectral_strength, k=cfg.spectral_k, roles=heads)
        return specopt.SpectralAdam(groups, lr=lr, spectral_strength=cfg.spectral_strength, k=cfg.spectral_k, **fast)
    weight_decay = cfg.l2_strength if cfg.mitigator == "l2" else 0.0  # torch Adam's weight decay is coupled L2
    return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay, **fast)


class SAC:
    """Networks, optimizers and the update rule. ``reset()`` re-initializes all of them (the resets baseline)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: Config, device: str | torch.device = "cpu") -> None:
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim
        self.device = torch.device(device)
        self.target_entropy = -cfg.target_entropy_scale * act_dim
        self.updates = 0  # gradient updates so far (drives the resets schedule)
        self.resets = 0
        self.info: dict[str, Tensor] = {}  # last update's losses, as device tensors (read only when logging)
        self.reset()

    def reset(self) -> None:
        """Fresh actor, critic, target critic, temperature and optimizers (draws from torch's global RNG)."""
        cfg, dev = self.cfg, self.device
        self.actor = Actor(self.obs_dim, self.act_dim, cfg).to(dev)
        self.critic = Critic(self.obs_dim, self.act_dim, cfg).to(dev)
        self.target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(cfg.init_temperature), device=dev, requires_grad=True)
        self.actor_opt = make_optimizer(self.actor, cfg.actor_lr, cfg, dev)
        self.critic_opt = make_optimizer(self.critic, cfg.critic_lr, cfg, dev)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.temperature_lr)
        self.actor_params = list(self.actor.parameters())
        self.critic_params = list(self.critic.parameters())
        self.target_params = list(self.target.parameters())
        # l2-init pulls toward the initialization (Kumar et al. 2023): grad += λ(θ − θ0)
        self.init_params = [p.detach().clone() for p in self.actor_params + self.critic_params]
        if cfg.compile:
            for module in (self.actor, self.critic, self.target):
                module.compile()

    @property
    def alpha(self) -> Tensor:
        return self.log_alpha.detach().exp()

    def _step(self, loss: Tensor, params: list[Tensor], opt: torch.optim.Optimizer, init: list[Tensor] | None) -> None:
        grads = torch.autograd.grad(loss, params)  # only these parameters' gradients are computed
        if init is not None:
            grads = torch._foreach_add(grads, torch._foreach_sub(params, init), alpha=self.cfg.l2_strength)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()

    @torch.no_grad()
    def td_target(self, b: Batch, alpha: Tensor) -> Tensor:
        """y = r + γ(1 − terminated)(min_j Q̄_j(s', a') − α log π(a'|s')), a' ~ π(·|s') sampled from the *next*
        observations. ``terminated`` is 0 at a time limit, so truncated episodes bootstrap."""
        next_action, next_log_prob = self.actor.sample(b.next_obs)
        next_q = self.target(b.next_obs, next_action).min(0).values
        return b.reward + self.cfg.gamma * (1.0 - b.terminated) * (next_q - alpha * next_log_prob)

    def update(self, b: Batch) -> None:
        """One gradient update of critic, target, actor and temperature on batch ``b`` (no host syncs)."""
        cfg = self.cfg
        alpha = self.alpha
        l2_init = cfg.mitigator == "l2-init"
        n_actor = len(self.actor_params)

        critic_loss = (self.critic(b.obs, b.action) - self.td_target(b, alpha)).pow(2).mean(-1).sum()
        self._step(critic_loss, self.critic_params, self.critic_opt, self.init_params[n_actor:] if l2_init else None)

        with torch.no_grad():
            torch._foreach_lerp_(self.target_params, self.critic_params, cfg.tau)

        action, log_prob = self.actor.sample(b.obs)
        actor_loss = (alpha * log_prob - self.critic(b.obs, action).min(0).values).mean()
        self._step(actor_loss, self.actor_params, self.actor_opt, self.init_params[:n_actor] if l2_init else None)

        log_prob = log_prob.detach()
        alpha_loss = (self.log_alpha.exp() * (-log_prob - self.target_entropy)).mean()  # α, not log α (PR #414)
        self._step(alpha_loss, [self.log_alpha], self.alpha_opt, None)

        self.info = {"critic_loss": critic_loss.detach(), "actor_loss": actor_loss.detach(),
                     "alpha_loss": alpha_loss.detach(), "entropy": -log_prob.mean()}
        self.updates += 1
        if cfg.mitigator == "resets" and self.updates % cfg.reset_interval == 0:
            self.reset()
            self.resets += 1

    def update_block(self, batches: Batch) -> None:
        """RR updates, update i on ``batches.select(i)``: a fresh batch for every update."""
        for i in range(batches.reward.shape[0]):
            self.update(batches.select(i))

    # --- measurement ------------------------------------------------------------------------------------------
    def grad_norms(self, b: Batch) -> dict[str, float]:
        """L2 norms of the critic and actor loss gradients on ``b`` (no optimizer step)."""
        critic_loss = (self.critic(b.obs, b.action) - self.td_target(b, self.alpha)).pow(2).mean(-1).sum()
        g_critic = torch.autograd.grad(critic_loss, self.critic_params)
        action, log_prob = self.actor.sample(b.obs)
        actor_loss = (self.alpha * log_prob - self.critic(b.obs, action).min(0).values).mean()
        g_actor = torch.autograd.grad(actor_loss, self.actor_params)
        return {"grad_norm_critic": _norm(g_critic), "grad_norm_actor": _norm(g_actor)}

    @torch.no_grad()
    def q_value(self, obs: Tensor, action: Tensor) -> Tensor:
        """min_j Q_j(s, a), the value the actor maximizes; shape (B,)."""
        return self.critic(obs, action).min(0).values

    # --- checkpointing ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "target": self.target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "init_params": self.init_params,
                "updates": self.updates, "resets": self.resets}

    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.critic.load_state_dict(s["critic"])
        self.target.load_state_dict(s["target"])
        with torch.no_grad():
            self.log_alpha.copy_(s["log_alpha"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        self.alpha_opt.load_state_dict(s["alpha_opt"])
        for p, q in zip(self.init_params, s["init_params"]):
            p.copy_(q)
        self.updates, self.resets = s["updates"], s["resets"]


def _norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors)))))


def param_norm(module: nn.Module) -> float:
    return _norm(p.detach() for p in module.parameters())


__all__ = ["SAC", "Actor", "Critic", "make_optimizer", "mlp", "param_norm", "tanh_gaussian_log_prob"]
