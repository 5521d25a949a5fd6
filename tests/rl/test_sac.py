"""SAC pieces: tanh-Gaussian log-probability, Polyak averaging, fresh batches, TD targets, resets, optimizers."""

from __future__ import annotations

import math

import pytest
import specopt
import torch

from rl.buffer import Batch, ReplayBuffer
from rl.config import Config
from rl.sac import SAC, Actor, tanh_gaussian_log_prob

OBS, ACT = 5, 3


def filled_buffer(n: int = 500, seed: int = 0) -> ReplayBuffer:
    g = torch.Generator().manual_seed(seed)
    buf = ReplayBuffer(1000, OBS, ACT)
    for _ in range(n):
        buf.add(torch.randn(OBS, generator=g), torch.rand(ACT, generator=g) * 2 - 1,
                float(torch.randn((), generator=g)), torch.randn(OBS, generator=g), False)
    return buf


def agent(**kw) -> SAC:
    torch.manual_seed(0)
    return SAC(OBS, ACT, Config(hidden=16, batch_size=8, **kw))


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    mean, log_std = torch.randn(64, ACT, dtype=torch.float64), torch.randn(64, ACT, dtype=torch.float64) - 0.5
    u = mean + log_std.exp() * torch.randn_like(mean)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    expected = dist.log_prob(torch.tanh(u).clamp(-1 + 1e-12, 1 - 1e-12)).sum(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(u, mean, log_std), expected, rtol=1e-6, atol=1e-6)


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


def test_log_std_is_clipped_to_the_configured_range():
    actor = Actor(OBS, ACT, Config(hidden=8))
    with torch.no_grad():
        actor.net[-1].bias.fill_(50.0)
    _, log_std = actor(torch.zeros(2, OBS))
    assert torch.all(log_std == 2.0)
    with torch.no_grad():
        actor.net[-1].bias.fill_(-50.0)
    assert torch.all(actor(torch.zeros(2, OBS))[1] == -10.0)


def test_polyak_update_moves_target_by_tau_toward_the_updated_critic():
    a = agent(tau=0.1)
    before = [p.clone() for p in a.target_params]
    batches = filled_buffer().sample(8, torch.Generator().manual_seed(1), blocks=1)
    captured = {}
    real_step = a.critic_opt.step

    def step_and_capture(*args, **kw):  # the critic right after its step, before the target update
        out = real_step(*args, **kw)
        captured["critic"] = [p.detach().clone() for p in a.critic_params]
        return out

    a.critic_opt.step = step_and_capture
    a.update(batches.select(0))
    for t0, c, t1 in zip(before, captured["critic"], a.target_params):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * c)


def test_every_update_gets_a_fresh_batch():
    buf = filled_buffer()
    batches = buf.sample(8, torch.Generator().manual_seed(0), blocks=4)
    assert batches.obs.shape == (4, 8, OBS) and batches.reward.shape == (4, 8)
    a = agent()
    seen = []
    a.update = lambda b: seen.append(b)
    a.update_block(batches)
    assert len(seen) == 4
    for i, b in enumerate(seen):
        torch.testing.assert_close(b.obs, batches.obs[i])
    for i in range(4):
        for j in range(i):
            assert not torch.equal(seen[i].obs, seen[j].obs)


def test_termination_cuts_the_bootstrap_and_truncation_keeps_it():
    a = agent(gamma=0.9)
    b = filled_buffer().sample(8, torch.Generator().manual_seed(0))
    alpha = a.alpha
    terminal = Batch(b.obs, b.action, b.reward, b.next_obs, torch.ones(8))
    torch.testing.assert_close(a.td_target(terminal, alpha), b.reward)
    torch.manual_seed(3)
    y = a.td_target(b, alpha)  # terminated = 0 (a time limit, or mid-episode)
    torch.manual_seed(3)
    next_action, next_log_prob = a.actor.sample(b.next_obs)  # sampled from s', the next observations
    expected = b.reward + 0.9 * (a.target(b.next_obs, next_action).min(0).values - alpha * next_log_prob)
    torch.testing.assert_close(y, expected)


def test_temperature_gradient_uses_alpha_not_log_alpha():
    a = agent(init_temperature=2.0)
    b = filled_buffer().sample(8, torch.Generator().manual_seed(0))
    seen = {}
    real = a._step

    def spy(loss, params, opt, init):
        if params and params[0] is a.log_alpha:
            seen["grad"] = torch.autograd.grad(loss, params, retain_graph=True)[0]
        return real(loss, params, opt, init)

    a._step = spy
    a.update(b)
    # dL/dlogα = α · mean(−log π − H̄): with α = 2 and the update's entropy estimate
    entropy = float(a.info["entropy"])
    expected = 2.0 * (entropy - a.target_entropy)
    assert float(seen["grad"]) == pytest.approx(expected, rel=1e-5)


def test_resets_reinitialize_networks_and_optimizers_every_interval():
    a = agent(mitigator="resets", reset_interval=3)
    batches = filled_buffer().sample(8, torch.Generator().manual_seed(0), blocks=2)
    a.update_block(batches)
    trained = [p.clone() for p in a.actor_params]
    assert a.resets == 0 and len(a.actor_opt.state) > 0
    a.update_block(batches)  # update 3 triggers the reset, update 4 trains the fresh networks once
    assert a.resets == 1 and a.updates == 4
    assert all(not torch.equal(p, q) for p, q in zip(trained, a.actor_params))
    assert all(int(s["step"]) == 1 for s in a.actor_opt.state.values())
    assert all(int(s["step"]) == 1 for s in a.alpha_opt.state.values())  # temperature optimizer re-created too


def test_spectral_mitigator_uses_spectral_adam_on_actor_and_critic_only():
    a = agent(mitigator="spectral", spectral_strength=0.5)
    assert isinstance(a.actor_opt, specopt.SpectralAdam) and isinstance(a.critic_opt, specopt.SpectralAdam)
    assert not isinstance(a.alpha_opt, specopt.SpectralAdam)
    roles = {r for g in a.critic_opt.param_groups for r in g.get("roles", [g.get("role")])}
    assert roles == {"matrix", "bias", "scale"}  # LayerNorm scales are pulled to 1, biases to 0
    assert all(g["spectral_strength"] == 0.5 for g in a.critic_opt.param_groups)


def test_spectral_step_pulls_sigma1_toward_one():
    a = agent(mitigator="spectral", spectral_strength=2.0, critic_lr=1e-3)
    with torch.no_grad():
        for p in a.critic_params:
            if p.ndim == 2:
                p.mul_(2.0)
    before = specopt.spectral_norms(a.critic)
    batches = filled_buffer().sample(8, torch.Generator().manual_seed(0), blocks=20)
    a.update_block(batches)
    after = specopt.spectral_norms(a.critic)
    assert all(abs(float(after[n]) - 1) < abs(float(before[n]) - 1) for n in before)


def test_l2_init_pulls_toward_the_initial_parameters():
    a = agent(mitigator="l2-init", l2_strength=1e3)
    with torch.no_grad():
        for p in a.critic_params:
            p.add_(0.5)
    dist = lambda: sum(float((p.detach() - q).norm()) for p, q in zip(a.critic_params, a.init_params[len(a.actor_params):]))
    d0 = dist()
    a.update_block(filled_buffer().sample(8, torch.Generator().manual_seed(0), blocks=5))
    assert dist() < d0


def test_buffer_checkpoint_holds_only_the_filled_part_and_round_trips(tmp_path):
    big = ReplayBuffer(100_000, OBS, ACT)
    small = filled_buffer(n=50)
    for i in range(50):
        big.add(small.obs[i], small.action[i], float(small.reward[i]), small.next_obs[i], bool(small.terminated[i]))
    torch.save(big.state_dict(), tmp_path / "b.pt")
    assert (tmp_path / "b.pt").stat().st_size < 50_000  # not the 100k-transition capacity (~6 MB)
    again = ReplayBuffer(100_000, OBS, ACT)
    again.load_state_dict(torch.load(tmp_path / "b.pt"))
    assert again.size == 50 and again.ptr == 50
    torch.testing.assert_close(again.next_obs[:50], small.next_obs[:50])


def test_buffer_is_a_ring():
    buf = ReplayBuffer(4, OBS, ACT)
    for i in range(6):
        buf.add(torch.full((OBS,), float(i)), torch.zeros(ACT), float(i), torch.zeros(OBS), False)
    assert len(buf) == 4 and buf.ptr == 2
    assert buf.reward.tolist() == [4.0, 5.0, 2.0, 3.0]


def test_spectral_heads_can_be_left_unregularized():
    a = agent(mitigator="spectral", spectral_heads=False)
    for opt, names in ((a.critic_opt, ("qs.0.6.weight", "qs.0.6.bias")), (a.actor_opt, ("net.6.weight", "net.6.bias"))):
        [group] = opt.param_groups
        roles = dict(zip(group["param_names"], group["roles"]))
        assert all(roles[n] == "none" for n in names)
        assert sum(r == "matrix" for r in roles.values()) == 2  # the two hidden layers stay regularized
