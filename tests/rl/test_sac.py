"""SAC pieces for N stacked agents: tanh-Gaussian log-probability, Polyak averaging, fresh batches, TD targets,
per-agent resets, per-agent optimizer strengths, the replay buffer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rl import streams
from rl.buffer import Batch, ReplayBuffer
from rl.config import Config
from rl.sac import SAC, Actor, tanh_gaussian_log_prob
from specopt.stacked import StackedSpectralAdam

OBS, ACT = 5, 3


def filled_buffer(n: int = 500, seed: int = 0, agents: int = 1, capacity: int = 1000,
                  distinct: bool = False) -> ReplayBuffer:
    """``n`` random transitions per agent, the same for every agent; with ``distinct`` agent k's observations are
    offset by 10·k, so that each agent's buffer holds values no other agent's holds."""
    g = torch.Generator().manual_seed(seed)
    buf = ReplayBuffer(agents, capacity, OBS, ACT)
    offset = 10.0 * torch.arange(agents, dtype=torch.float32)[:, None] if distinct else torch.zeros(agents, 1)
    for _ in range(n):
        buf.add(torch.randn(1, OBS, generator=g) + offset, (torch.rand(1, ACT, generator=g) * 2 - 1).expand(agents, ACT),
                torch.randn(1, generator=g).expand(agents), torch.randn(1, OBS, generator=g) + offset,
                torch.zeros(agents))
    return buf


def config(**kw) -> Config:
    return Config(**{"hidden": 16, "batch_size": 8, **kw})


def agent(**kw) -> SAC:
    return SAC(OBS, ACT, config(**kw))


def sample(buf: ReplayBuffer, a: SAC, blocks: int | None = None) -> Batch:
    """The next batch (or block) of ``a``'s replay streams, as the training loop draws it."""
    return buf.sample(a.cfg.batch_size, *a.streams.draw(streams.REPLAY), blocks=blocks)


def sigma1(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """σ1 of every stacked weight matrix, per agent: a list of (N,) tensors."""
    return [torch.linalg.matrix_norm(p.detach(), ord=2) for p in params if p.dim() == 3]


# --- the policy ---------------------------------------------------------------------------------------------------
def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    shape = (2, 64, ACT)  # (agents, batch, actions)
    mean, log_std = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64) - 0.5
    u = mean + log_std.exp() * torch.randn_like(mean)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    expected = dist.log_prob(torch.tanh(u).clamp(-1 + 1e-12, 1 - 1e-12)).sum(-1)
    got = tanh_gaussian_log_prob(u, mean, log_std)
    assert got.shape == (2, 64)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_tanh_gaussian_log_prob_by_numerical_change_of_variables():
    """Independent check: p_A(a) = p_U(u) / |da/du| with da/du taken by central finite differences."""
    mean, log_std = torch.tensor([[0.3, -1.0]], dtype=torch.float64), torch.tensor([[-0.2, 0.4]], dtype=torch.float64)
    u = torch.tensor([[0.7, -2.5]], dtype=torch.float64)
    h = 1e-6
    dadu = (torch.tanh(u + h) - torch.tanh(u - h)) / (2 * h)
    std = log_std.exp()
    log_pu = -0.5 * ((u - mean) / std) ** 2 - torch.log(std * math.sqrt(2 * math.pi))
    expected = (log_pu - torch.log(dadu)).sum(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(u, mean, log_std), expected, rtol=1e-7, atol=1e-7)


def test_log_prob_stays_finite_where_tanh_saturates():
    u = torch.tensor([[30.0, -30.0]])
    lp = tanh_gaussian_log_prob(u, torch.zeros(1, 2), torch.zeros(1, 2))
    assert torch.isfinite(lp).all()


def test_actor_sample_uses_the_given_noise():
    a = agent(seeds=(0, 1))
    obs = torch.randn(2, 4, OBS)
    noise = torch.randn(2, 4, ACT)
    action, log_prob = a.actor.sample(obs, noise)
    mean, log_std = a.actor(obs)
    u = mean + log_std.exp() * noise
    torch.testing.assert_close(action, torch.tanh(u))
    expected = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
    torch.testing.assert_close(log_prob, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.actor.act(obs), torch.tanh(mean))  # deterministic without noise


def test_log_std_is_clipped_to_the_configured_range():
    actor = agent(seeds=(0, 1), log_std_min=-5.0, log_std_max=1.5).actor
    assert isinstance(actor, Actor)
    with torch.no_grad():
        actor.net[-1].bias[0].fill_(50.0)  # agent 0 far above the range, agent 1 far below
        actor.net[-1].bias[1].fill_(-50.0)
    _, log_std = actor(torch.zeros(2, 3, OBS))
    assert log_std.shape == (2, 3, ACT)
    assert torch.all(log_std[0] == 1.5) and torch.all(log_std[1] == -5.0)


# --- the update ---------------------------------------------------------------------------------------------------
def test_polyak_update_moves_target_by_tau_toward_the_updated_critic():
    a = agent(tau=0.1, seeds=(0, 1), critics=2)
    with torch.no_grad():  # target ≠ critic, so that the mix is visible
        for t in a.target_params:
            t.add_(0.3)
    before = [p.clone() for p in a.target_params]
    batch = sample(filled_buffer(agents=2), a)
    captured = {}
    real_step = a.critic_opt.step

    def step_and_capture(*args, **kw):  # the critic right after its step, before the target update
        out = real_step(*args, **kw)
        captured["critic"] = [p.detach().clone() for p in a.critic_params]
        return out

    a.critic_opt.step = step_and_capture
    a.update(batch)
    for t0, c, t1 in zip(before, captured["critic"], a.target_params):
        assert not torch.equal(t1, t0)
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * c)


def test_every_update_gets_a_fresh_batch_from_its_own_agents_buffer():
    buf = filled_buffer(agents=2, distinct=True)
    a = agent(seeds=(0, 1))
    batches = sample(buf, a, blocks=4)
    assert batches.obs.shape == (4, 2, 8, OBS) and batches.reward.shape == (4, 2, 8)
    seen = []
    a.update = lambda b: seen.append(b)
    a.update_block(batches)
    assert len(seen) == 4
    for i, b in enumerate(seen):
        assert b.obs.shape == (2, 8, OBS)
        torch.testing.assert_close(b.obs, batches.obs[i])
    for i in range(4):
        for j in range(i):
            assert not torch.equal(seen[i].obs, seen[j].obs)
    for k in range(2):  # agent k's transitions all come from agent k's buffer
        stored = buf.obs[k, :len(buf)]
        rows = batches.obs[:, k].reshape(-1, OBS)
        assert all((stored == row).all(-1).any() for row in rows)
    assert not torch.equal(sample(buf, a, blocks=4).obs, batches.obs)  # the next draw of the stream differs


def test_a_training_block_is_replay_ratio_updates_on_fresh_batches():
    buf = filled_buffer(agents=2, distinct=True)
    a, b = agent(seeds=(0, 1), replay_ratio=3), agent(seeds=(0, 1), replay_ratio=3)
    seen = []
    real = a.update
    a.update = lambda batch: (seen.append(batch), real(batch))
    a.train_block(buf)
    b.update_block(sample(buf, b, blocks=3))  # what a block is: the next replay draw, RR batches, RR updates
    assert a.updates == b.updates == 3 and len(seen) == 3
    assert all(not torch.equal(seen[i].obs, seen[j].obs) for i in range(3) for j in range(i))
    for p, q in zip(a.actor_params + a.critic_params + [a.log_alpha], b.actor_params + b.critic_params + [b.log_alpha]):
        assert torch.equal(p, q)
    assert all(torch.equal(c, d) for c, d in zip(a.streams.counters, b.streams.counters))


def test_termination_cuts_the_bootstrap_and_truncation_keeps_it():
    a = agent(gamma=0.9, seeds=(0, 1), critics=2)
    with torch.no_grad():  # the bootstrap must read the target critic, not the online one
        for t in a.target_params:
            t.mul_(1.5)
    b = sample(filled_buffer(agents=2), a)
    alpha = torch.tensor([0.5, 2.0])
    noise = torch.randn(2, 8, ACT)
    # agent 0 at true terminal states, agent 1 at time limits (terminated = 0)
    terminated = torch.stack([torch.ones(8), torch.zeros(8)])
    y = a.td_target(Batch(b.obs, b.action, b.reward, b.next_obs, terminated), alpha, noise)
    torch.testing.assert_close(y[0], b.reward[0])
    # independent computation for agent 1: a' = tanh(μ(s') + σ(s')·noise) from the *next* observations
    mean, log_std = a.actor(b.next_obs)
    u = mean + log_std.exp() * noise
    log_prob = (torch.distributions.Normal(mean, log_std.exp()).log_prob(u) - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
    q = torch.minimum(a.target.qs[0](torch.cat([b.next_obs, torch.tanh(u)], -1)),
                      a.target.qs[1](torch.cat([b.next_obs, torch.tanh(u)], -1))).squeeze(-1)
    expected = b.reward + 0.9 * (q - alpha[:, None] * log_prob)
    torch.testing.assert_close(y[1], expected[1].detach(), rtol=1e-4, atol=1e-4)


def test_temperature_gradient_uses_alpha_not_log_alpha():
    a = agent(seeds=(0, 1))
    with torch.no_grad():
        a.log_alpha.copy_(torch.tensor([2.0, 0.5]).log())
    b = sample(filled_buffer(agents=2), a)
    seen = {}
    real = a._step

    def spy(loss, params, opt, init):
        if params and params[0] is a.log_alpha:
            seen["grad"] = torch.autograd.grad(loss, params, retain_graph=True)[0]
        return real(loss, params, opt, init)

    a._step = spy
    a.update(b)
    # dL/dlog α_n = α_n · mean(−log π − H̄), with the update's own entropy estimate
    expected = torch.tensor([2.0, 0.5]) * (a.info["entropy"] - a.target_entropy)
    assert seen["grad"].shape == (2,)
    torch.testing.assert_close(seen["grad"], expected, rtol=1e-5, atol=1e-6)


# --- resets -------------------------------------------------------------------------------------------------------
def _steps(opt: StackedSpectralAdam) -> list[list[float]]:
    return [st["step"].tolist() for st in opt.state]


def test_resets_reinitialize_only_the_resets_agents_every_interval():
    # agents ("none", 0) and ("resets", 0): same seed, so the same initialization and batches until the reset
    a = agent(mitigators=("none", "resets"), reset_interval=3)
    alone = agent(mitigators=("none",))  # the "none" agent by itself: what agent 0 must stay
    buf = filled_buffer(agents=2)
    fresh_actor = [p[1].clone() for p in a.actor_params]
    for _ in range(2):
        batch = sample(buf, a)
        a.update(batch)
        alone.update(Batch(*(t[:1] for t in batch)))
    assert a.resets == [0, 0]
    trained = [p.detach().clone() for p in a.actor_params + a.critic_params]
    batch = sample(buf, a)
    a.update(batch)  # update 3: agent 1 resets right after it
    alone.update(Batch(*(t[:1] for t in batch)))
    assert a.updates == 3 and a.resets == [0, 1]
    # agent 1: fresh networks (not the trained ones, nor its first initialization), target = critic, α = 1,
    # optimizer state of a new optimizer
    for p, q in zip(a.actor_params + a.critic_params, trained):
        assert not torch.equal(p[1], q[1])
    assert any(not torch.equal(p[1], q) for p, q in zip(a.actor_params, fresh_actor))
    for p, p0 in zip(a.actor_params + a.critic_params, a.init_params):
        assert torch.equal(p[1], p0[1])
    for t, c in zip(a.target_params, a.critic_params):
        assert torch.equal(t[1], c[1])
    assert float(a.log_alpha[1].detach()) == 0.0
    for opt in (a.actor_opt, a.critic_opt, a.alpha_opt):
        assert all(s == [3.0, 0.0] for s in _steps(opt))
        for st in opt.state:
            assert not st["exp_avg"][1].any() and not st["exp_avg_sq"][1].any()
            assert st["exp_avg_sq"][0].any()  # agent 0's moments are kept
    # agent 0 is untouched: exactly the "none" agent trained alone
    for ours, theirs in ((a.actor_params, alone.actor_params), (a.critic_params, alone.critic_params),
                         (a.target_params, alone.target_params), ([a.log_alpha], [alone.log_alpha])):
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p[0], q[0], rtol=1e-6, atol=1e-7)
    a.update(sample(buf, a))  # update 4 trains the fresh networks once
    assert a.resets == [0, 1] and all(s == [4.0, 1.0] for s in _steps(a.actor_opt) + _steps(a.alpha_opt))
    a.update_block(sample(buf, a, blocks=2))  # update 6: the second reset
    assert a.updates == 6 and a.resets == [0, 2]


# --- mitigators as optimizer settings -----------------------------------------------------------------------------
def test_spectral_mitigator_regularizes_actor_and_critic_of_spectral_agents_only():
    a = agent(mitigators=("none", "spectral", "l2"), spectral_strength=0.5)
    for opt in (a.actor_opt, a.critic_opt):
        assert isinstance(opt, StackedSpectralAdam)
        assert set(opt.roles) == {"matrix", "bias", "scale"}  # LayerNorm scales are pulled to 1, biases to 0
        assert opt.strength.tolist() == [0.0, 0.5, 0.0]
    assert a.alpha_opt.roles == ["none"] and a.alpha_opt.strength.tolist() == [0.0, 0.0, 0.0]
    plain = agent(mitigators=("none", "l2"))  # no spectral agent: plain Adam, no power iterations
    for opt in (plain.actor_opt, plain.critic_opt):
        assert set(opt.roles) == {"none"} and not opt.strength.any()


def test_spectral_step_pulls_sigma1_toward_one():
    # same seed, same batches: the spectral agent differs from the "none" agent only by the spectral step
    a = agent(mitigators=("none", "spectral"), spectral_strength=2.0, critic_lr=1e-3)
    with torch.no_grad():
        for p in a.critic_params:
            if p.dim() == 3:
                p.mul_(2.0)
    before = sigma1(a.critic_params)
    assert len(before) == 3 and all(torch.equal(s[0], s[1]) for s in before)
    a.update_block(sample(filled_buffer(agents=2), a, blocks=20))
    after = sigma1(a.critic_params)
    for b, s in zip(before, after):
        assert abs(float(s[1]) - 1) < abs(float(b[1]) - 1)  # spectral: closer to one than at the start
        assert abs(float(s[1]) - 1) < abs(float(s[0]) - 1)  # and closer than plain Adam got


def test_l2_pulls_toward_zero_and_l2_init_toward_the_initial_parameters():
    a = agent(mitigators=("none", "l2", "l2-init"), l2_strength=1e3)
    with torch.no_grad():
        for p in a.critic_params:
            p.add_(0.5)
    init = a.init_params[len(a.actor_params):]

    def dist_to_init():
        return sum((p.detach() - q).flatten(1).pow(2).sum(1) for p, q in zip(a.critic_params, init)).sqrt()

    def norm():
        return sum(p.detach().flatten(1).pow(2).sum(1) for p in a.critic_params).sqrt()

    d0, n0 = dist_to_init(), norm()
    a.update_block(sample(filled_buffer(agents=3), a, blocks=5))
    d, n = dist_to_init(), norm()
    assert d[2] < d0[2] and d[2] < d[0]  # l2-init: toward θ0, faster than no regularization
    assert n[1] < n0[1] and n[1] < n[0]  # l2: toward 0


@pytest.mark.parametrize("layers, layer_norm, critics, spectral_heads",
                         [(2, True, 1, True), (2, True, 2, False), (1, False, 1, False), (3, False, 2, True)])
def test_the_agents_roles_are_specopts_roles_of_one_agents_plain_networks(layers, layer_norm, critics,
                                                                          spectral_heads):
    import specopt
    from rl.sac import mlp

    a = agent(mitigators=("none", "spectral"), layers=layers, layer_norm=layer_norm, critics=critics,
              spectral_heads=spectral_heads)
    head = str(3 * layers)  # an MLP's output layer, at this index of its Sequential
    # one agent alone: ordinary nn.Linear / nn.LayerNorm networks, roles named by specopt with no help
    alone = {"actor": nn.ModuleDict({"net": mlp(OBS, 2 * ACT, 16, layers, layer_norm)}),
             "critic": nn.ModuleDict({"qs": nn.ModuleList(mlp(OBS + ACT, 1, 16, layers, layer_norm)
                                                          for _ in range(critics))})}
    for net, opt, plain in ((a.actor, a.actor_opt, alone["actor"]), (a.critic, a.critic_opt, alone["critic"])):
        expected = {name: "none" if not spectral_heads and name.split(".")[-2] == head else role
                    for name, _, role in specopt.named_roles(plain)}
        assert dict(zip([name for name, _ in net.named_parameters()], opt.roles)) == expected


def test_spectral_heads_can_be_left_unregularized():
    a = agent(mitigators=("none", "spectral"), spectral_heads=False)
    for opt, net, heads in ((a.critic_opt, a.critic, ("qs.0.6.weight", "qs.0.6.bias")),
                            (a.actor_opt, a.actor, ("net.6.weight", "net.6.bias"))):
        roles = dict(zip([name for name, _ in net.named_parameters()], opt.roles))
        assert all(roles[n] == "none" for n in heads)
        assert sum(r == "matrix" for r in roles.values()) == 2  # the two hidden layers stay regularized
    with_heads = agent(mitigators=("none", "spectral"))
    assert dict(zip([n for n, _ in with_heads.critic.named_parameters()], with_heads.critic_opt.roles))[
        "qs.0.6.weight"] == "matrix"
    # one update (same seed, same batch for both agents): the critic's head gets the same Adam step for the
    # spectral agent as for the "none" agent without heads, and a different one with heads
    buf = filled_buffer(agents=2)
    for sac, same in ((a, True), (with_heads, False)):
        sac.update(sample(buf, sac))
        head = dict(sac.critic.named_parameters())["qs.0.6.weight"]
        assert torch.equal(head[0], head[1]) == same
        hidden = dict(sac.critic.named_parameters())["qs.0.0.weight"]
        assert not torch.equal(hidden[0], hidden[1])


# --- the replay buffer --------------------------------------------------------------------------------------------
def test_buffer_checkpoint_holds_only_the_filled_part_and_round_trips(tmp_path):
    big = ReplayBuffer(2, 100_000, OBS, ACT)
    small = filled_buffer(n=50, agents=2)
    for i in range(50):
        big.add(small.obs[:, i], small.action[:, i], small.reward[:, i], small.next_obs[:, i], small.terminated[:, i])
    torch.save(big.state_dict(), tmp_path / "b.pt")
    assert (tmp_path / "b.pt").stat().st_size < 50_000  # not the 2 × 100k-transition capacity (~12 MB)
    again = ReplayBuffer(2, 100_000, OBS, ACT)
    again.load_state_dict(torch.load(tmp_path / "b.pt"))
    assert again.size == 50 and again.ptr == 50
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        torch.testing.assert_close(getattr(again, name)[:, :50], getattr(small, name)[:, :50])
    with pytest.raises(ValueError, match="agents"):
        ReplayBuffer(3, 100_000, OBS, ACT).load_state_dict(big.state_dict())


def test_buffer_is_a_ring_and_samples_only_the_filled_part():
    buf = ReplayBuffer(2, 4, OBS, ACT)
    for i in range(6):
        buf.add(torch.full((2, OBS), float(i)), torch.zeros(2, ACT), torch.tensor([i, 10.0 + i]), torch.zeros(2, OBS),
                torch.zeros(2))
    assert len(buf) == 4 and buf.ptr == 2
    assert buf.reward.tolist() == [[4.0, 5.0, 2.0, 3.0], [14.0, 15.0, 12.0, 13.0]]
    part = ReplayBuffer(2, 1000, OBS, ACT)
    for i in range(3):
        part.add(torch.zeros(2, OBS), torch.zeros(2, ACT), torch.tensor([i + 1.0, -(i + 1.0)]), torch.zeros(2, OBS),
                 torch.zeros(2))
    b = part.sample(256, streams.keys([0, 1], streams.REPLAY), 0, blocks=2)
    assert b.reward.shape == (2, 2, 256)
    assert set(b.reward[:, 0].flatten().tolist()) == {1.0, 2.0, 3.0}
    assert set(b.reward[:, 1].flatten().tolist()) == {-1.0, -2.0, -3.0}
