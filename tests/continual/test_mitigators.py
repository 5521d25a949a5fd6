"""Mitigators: registry, each update against its hand formula, recycling, and exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import specopt
from continual.mitigators import (
    DEFAULT_STRENGTHS,
    MITIGATORS,
    build_mitigator,
    mlp_blocks,
    model_activation,
)
from continual.models import build_model

from tests.continual.toy_models import MLP

torch.set_num_threads(1)


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(n)]


def train(model: nn.Module, mit, data, start: int = 0) -> None:
    """The runner's loop."""
    for i, (x, y) in enumerate(data):
        mit.optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        pen = mit.penalty(model)
        if pen is not None:
            loss = loss + pen
        loss.backward()
        mit.optimizer.step()
        mit.after_step(start + i, x)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# Options that make the periodic mitigators act within a few steps.
FAST = {"redo": {"frequency": 2}, "cbp": {"maturity": 1}}
STRONG = {"redo": 0.5, "cbp": 0.3, "shrink-perturb": 0.01}


# --------------------------------------------------------------------------------------------- registry
def test_registry_lists_all_baselines_with_defaults():
    expected = {"none", "l2", "l2-init", "shrink-perturb", "redo", "crelu", "wasserstein", "ewc", "spectral",
                "spectral-coupled", "cbp"}
    assert set(MITIGATORS) == expected == set(DEFAULT_STRENGTHS)
    assert DEFAULT_STRENGTHS["spectral"] == specopt.CONTINUAL_STRENGTH
    assert model_activation("crelu") == "crelu" and model_activation("l2") == "relu"


@pytest.mark.parametrize("name", MITIGATORS)
def test_every_mitigator_builds_and_steps(name):
    torch.manual_seed(0)
    model = MLP(model_activation(name))
    mit = build_mitigator(name, model, lr=1e-2, **FAST.get(name, {}))
    assert mit.name == name and mit.strength == DEFAULT_STRENGTHS[name]
    before = flat(model)
    train(model, mit, batches(3))
    after = flat(model)
    assert torch.isfinite(after).all() and not torch.equal(before, after)


def test_unknown_name_is_a_one_line_value_error_listing_valid_names():
    with pytest.raises(ValueError) as e:
        build_mitigator("dropout", MLP(), lr=1e-3)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in MITIGATORS)
    with pytest.raises(ValueError):
        model_activation("dropout")


def test_unknown_option_is_a_value_error():
    with pytest.raises(ValueError, match="option"):
        build_mitigator("l2", MLP(), lr=1e-3, frequency=3)


def test_optimizers_are_adam_or_spectral_adam():
    assert type(build_mitigator("l2", MLP(), 1e-3).optimizer) is torch.optim.Adam
    opt = build_mitigator("spectral", MLP(), 1e-3, strength=0.5).optimizer
    assert isinstance(opt, specopt.SpectralAdam)
    assert {g["spectral_strength"] for g in opt.param_groups} == {0.5}
    roles = {r for g in opt.param_groups for r in (g["roles"] if "roles" in g else [g["role"]])}
    assert roles >= {"matrix", "bias", "scale"}  # biases and LayerNorm scales are regularized too


# --------------------------------------------------------------------------------------------- penalties
def test_l2_penalty_is_lambda_squared_norm():
    model = MLP()
    mit = build_mitigator("l2", model, 1e-3, strength=0.1)
    assert float(mit.penalty(model).detach()) == pytest.approx(0.1 * float(flat(model).pow(2).sum()), rel=1e-6)


def test_l2_init_penalty_is_zero_at_init_and_lambda_squared_distance_after():
    model = MLP()
    mit = build_mitigator("l2-init", model, 1e-3, strength=0.1)
    assert float(mit.penalty(model).detach()) == 0.0
    with torch.no_grad():
        model.head.weight.add_(0.5)
    assert float(mit.penalty(model).detach()) == pytest.approx(0.1 * 0.25 * model.head.weight.numel(), rel=1e-6)


def test_wasserstein_penalty_matches_sorted_formula_and_ignores_permutations():
    model = MLP()
    mit = build_mitigator("wasserstein", model, 1e-3, strength=0.1)
    init = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        w = model.head.weight
        w.copy_(w.flatten()[torch.randperm(w.numel())].view_as(w))  # same distribution → zero distance
    assert float(mit.penalty(model).detach()) == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5).add_(0.1)
    expected = sum(float((p.detach().flatten().sort().values - p0.flatten().sort().values).pow(2).sum())
                   for p, p0 in zip(model.parameters(), init))
    assert float(mit.penalty(model).detach()) == pytest.approx(0.1 * expected, rel=1e-5)


@pytest.mark.parametrize("name", ["l2", "l2-init", "wasserstein"])
def test_decoupled_direction_is_the_gradient_of_the_coupled_term(name):
    torch.manual_seed(1)
    model = MLP()
    mit = build_mitigator(name, model, 1e-3, strength=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3).add_(0.05)
    for n, p in mit.named_params.items():
        (g,) = torch.autograd.grad(mit.term(n, p), p)
        torch.testing.assert_close(mit.direction(n, p), g)


@pytest.mark.parametrize("name", ["l2", "l2-init", "wasserstein"])
def test_decoupled_step_is_lr_lambda_gradient_and_no_penalty(name):
    torch.manual_seed(2)
    model = MLP()
    mit = build_mitigator(name, model, lr=0.1, strength=0.5, decoupled=True)
    assert mit.penalty(model) is None
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3).add_(0.05)
    expected = [p.detach() - 0.1 * 0.5 * mit.direction(n, p.detach()) for n, p in mit.named_params.items()]
    mit.after_step(0, torch.zeros(1, 6))
    for p, e in zip(mit.named_params.values(), expected):
        torch.testing.assert_close(p.detach(), e)


@pytest.mark.parametrize("name", ["l2", "l2-init", "wasserstein", "ewc", "spectral-coupled"])
def test_minimizing_the_penalty_alone_decreases_it(name):
    torch.manual_seed(3)
    model = MLP()
    mit = build_mitigator(name, model, lr=1e-2, strength=1.0)
    x, y = batches(1)[0]
    train(model, mit, [(x, y)] * 5)  # builds EWC's Fisher and anchor
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5).add_(0.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    values = []
    for _ in range(5):
        opt.zero_grad()
        pen = mit.penalty(model)
        values.append(float(pen.detach()))
        pen.backward()
        opt.step()
    assert values[-1] < values[0]


def test_spectral_coupled_penalty_is_lambda_times_R():
    torch.manual_seed(4)
    model = MLP()
    mit = build_mitigator("spectral-coupled", model, 1e-3, strength=0.01)
    r = 0.0
    for name, p, role in specopt.named_roles(model):
        if role == "matrix":
            r += (torch.linalg.matrix_norm(p.detach(), ord=2) ** 2 - 1) ** 2
        elif role == "bias":
            r += p.detach().pow(2).sum() ** 2
        elif role == "scale":
            r += (p.detach() - 1).pow(2).sum()
    for _ in range(100):  # warm-started power iterations: one per call, after 16 from the fixed start
        penalty = mit.penalty(model)
    assert float(penalty.detach()) == pytest.approx(0.01 * float(r), rel=1e-4)


# --------------------------------------------------------------------------------------------- streaming EWC
def test_ewc_fisher_and_anchor_are_bias_corrected_emas_of_data_gradients():
    torch.manual_seed(5)
    model = MLP()
    mit = build_mitigator("ewc", model, lr=1e-2, strength=10.0, beta_fisher=0.9, beta_anchor=0.8)
    assert mit.penalty(model) is None  # nothing before the first update
    (x1, y1), (x2, y2) = batches(2)
    train(model, mit, [(x1, y1)])
    g1 = {n: p.grad.clone() for n, p in mit.named_params.items()}
    theta1 = {n: p.detach().clone() for n, p in mit.named_params.items()}
    for n in g1:
        torch.testing.assert_close(mit.fisher[n], 0.1 * g1[n] ** 2)
        torch.testing.assert_close(mit.anchor[n], 0.2 * theta1[n])
    f_hat, a_hat = mit.corrected()
    for n in g1:
        torch.testing.assert_close(f_hat[n], g1[n] ** 2)
        torch.testing.assert_close(a_hat[n], theta1[n])
    assert float(mit.penalty(model).detach()) == pytest.approx(0.0, abs=1e-12)  # θ = θ̄̂ right after the first step
    # second step: the Fisher sees the data gradient only, not the penalty's
    with torch.no_grad():
        model.head.weight.add_(0.3)  # make the penalty's gradient non-zero
    model.zero_grad()
    F.cross_entropy(model(x2), y2).backward()
    g2 = {n: p.grad.clone() for n, p in mit.named_params.items()}
    train(model, mit, [(x2, y2)], start=1)
    for n in g2:
        torch.testing.assert_close(mit.fisher[n], 0.9 * 0.1 * g1[n] ** 2 + 0.1 * g2[n] ** 2)
    assert mit.t == 2


# --------------------------------------------------------------------------------------------- shrink & perturb
def test_shrink_perturb_without_noise_shrinks_toward_the_initial_mean():
    model = MLP()
    mit = build_mitigator("shrink-perturb", model, 1e-3, strength=0.1, noise_scale=0.0)
    with torch.no_grad():
        model.body[2].weight.fill_(3.0)  # LayerNorm γ (initially 1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mit.after_step(0, torch.zeros(1, 6))
    for n, p in model.named_parameters():
        mu = 1.0 if n.endswith("2.weight") or n.endswith("5.weight") else 0.0  # LayerNorm scales start at 1
        torch.testing.assert_close(p.detach(), 0.9 * before[n] + 0.1 * mu)


def test_shrink_perturb_noise_has_the_initial_scale_and_comes_from_its_generator():
    torch.manual_seed(6)
    model = MLP()
    lam = 0.02
    mit = build_mitigator("shrink-perturb", model, 1e-3, strength=lam, seed=123)
    sigma = math.sqrt(lam * (2 - lam))
    assert mit.noise_scale == pytest.approx(sigma)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stds = {n: float(p.std()) if p.numel() > 1 and not (p == p.flatten()[0]).all() else 0.0 for n, p in before.items()}
    gen = torch.Generator().manual_seed(123)
    mit.after_step(0, torch.zeros(1, 6))
    for n, p in model.named_parameters():
        mu = 1.0 if n in ("body.2.weight", "body.5.weight") else 0.0
        expected = (1 - lam) * before[n] + lam * mu
        if stds[n]:
            expected = expected + sigma * stds[n] * torch.randn(p.shape, generator=gen)
        torch.testing.assert_close(p.detach(), expected)


# --------------------------------------------------------------------------------------------- ReDo / CBP
def _kill_unit(model: MLP, unit: int) -> None:
    with torch.no_grad():  # γ = 0, β = −1 after the LayerNorm: the ReLU input is −1 for every x
        model.body[2].weight[unit] = 0.0
        model.body[2].bias[unit] = -1.0


def test_redo_recycles_a_dead_unit_and_leaves_live_ones_alone():
    torch.manual_seed(7)
    model = MLP()
    mit = build_mitigator("redo", model, lr=1e-2, strength=0.0, frequency=5)  # τ = 0: exactly dead units only
    data = batches(4)
    train(model, mit, data)  # steps 0..3: no recycling yet, Adam moments become non-zero
    mit.after_step(4, data[0][0])  # not a multiple of the frequency: nothing happens
    assert mit.last_recycled == []
    _kill_unit(model, 3)
    x = torch.randn(256, 6)
    with torch.no_grad():  # units of block 1 that are dead on x anyway (their rows of body.4 get recycled too)
        h = model.body[:7](x)
    dead1 = [int(i) for i in (h.abs().mean(0) == 0).nonzero().flatten()]
    lin, ln, out = model.body[1], model.body[2], model.body[4]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = {n: {k: v.clone() for k, v in mit.optimizer.state[p].items()} for n, p in model.named_parameters()}
    mit.after_step(5, x)
    assert mit.last_recycled == [1, len(dead1)]
    bound = 1 / math.sqrt(lin.in_features)
    assert not torch.equal(lin.weight[3], before["body.1.weight"][3])
    assert lin.weight[3].abs().max() <= bound and lin.bias[3].abs() <= bound
    assert ln.weight[3] == 1.0 and ln.bias[3] == 0.0
    assert (out.weight[:, 3] == 0).all()
    keep = [i for i in range(8) if i != 3]
    rows = [i for i in range(8) if i not in dead1]
    torch.testing.assert_close(lin.weight[keep], before["body.1.weight"][keep])
    torch.testing.assert_close(lin.bias[keep], before["body.1.bias"][keep])
    torch.testing.assert_close(out.weight[rows][:, keep], before["body.4.weight"][rows][:, keep])
    for name, param, index in [("body.1.weight", lin.weight, 3), ("body.1.bias", lin.bias, 3),
                               ("body.2.weight", ln.weight, 3), ("body.2.bias", ln.bias, 3)]:
        st = mit.optimizer.state[param]
        for k in ("exp_avg", "exp_avg_sq"):
            assert (st[k][index] == 0).all(), (name, k)
            other = state[name][k].clone()
            other[index] = 0
            torch.testing.assert_close(st[k], other)
    st = mit.optimizer.state[out.weight]
    for k in ("exp_avg", "exp_avg_sq"):
        assert (st[k][:, 3] == 0).all()
        torch.testing.assert_close(st[k][rows][:, keep], state["body.4.weight"][k][rows][:, keep])


def test_redo_keeps_the_function_at_the_moment_of_recycling():
    torch.manual_seed(8)
    model = MLP(layer_norm=False)
    mit = build_mitigator("redo", model, lr=1e-2, strength=0.0, frequency=1)
    with torch.no_grad():
        model.body[1].weight[2] = 0.0
        model.body[1].bias[2] = -1.0
    x = torch.randn(16, 6)
    y0 = model(x).detach()
    mit.after_step(1, x)
    assert mit.last_recycled[0] == 1
    torch.testing.assert_close(model(x).detach(), y0)


def test_redo_and_cbp_recycle_both_halves_after_crelu():
    torch.manual_seed(9)
    model = MLP("crelu", layer_norm=False)
    mit = build_mitigator("redo", model, lr=1e-2, strength=0.0, frequency=1)
    with torch.no_grad():
        model.body[1].weight[1] = 0.0
        model.body[1].bias[1] = 0.0
    mit.after_step(1, torch.randn(8, 6))
    assert mit.last_recycled[0] == 1
    assert (model.body[4].weight[:, [1, 9]] == 0).all()


def test_unit_recycling_rejects_non_mlp_architectures():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2, 2))
    for name in ("redo", "cbp"):
        with pytest.raises(ValueError, match="Conv2d"):
            build_mitigator(name, conv, 1e-3)
    assert len(mlp_blocks(MLP())) == 2


def test_mlp_blocks_take_the_head_last_wherever_it_is_registered():
    class HeadFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 3)
            self.body = nn.Sequential(nn.Linear(6, 8), nn.ReLU())

        def forward(self, x):
            return self.head(self.body(x))

    model = HeadFirst()
    (block,) = mlp_blocks(model)
    assert block.linear is model.body[0] and block.outgoing is model.head


def test_cbp_utility_is_the_contribution_of_the_training_forward_pass():
    torch.manual_seed(12)
    model = MLP(layer_norm=False)
    mit = build_mitigator("cbp", model, lr=1e-2, strength=0.0, decay=0.9)
    x, y = batches(1)[0]
    with torch.no_grad():
        h = [model.body[:4](x), model.body[:7](x)]  # activations of the training forward (pre-step weights)
    train(model, mit, [(x, y)])
    for j, (hj, out) in enumerate(zip(h, [model.body[4], model.head])):
        expected = 0.1 * hj.abs().mean(0) * out.weight.detach().abs().sum(0)
        torch.testing.assert_close(mit.utility[str(j)], expected)
    assert all(int(a.max()) == 1 for a in mit.age.values())


def test_cbp_replaces_the_lowest_utility_mature_units():
    torch.manual_seed(10)
    model = MLP(layer_norm=False)
    mit = build_mitigator("cbp", model, lr=1e-2, strength=0.2, maturity=2)
    with torch.no_grad():  # unit 5 of block 0 is dead: zero activity, zero contribution, the lowest utility
        model.body[1].weight[5] = 0.0
        model.body[1].bias[5] = -10.0
    train(model, mit, batches(2))  # ages reach 2: nobody is mature yet
    assert all(int(a.max()) == 2 for a in mit.age.values())
    assert float(mit.utility["0"][5]) == 0.0
    train(model, mit, batches(1, seed=1), start=2)  # ages 3 > 2: 8 mature, budget 1.6 → one unit each
    assert int(mit.age["0"][5]) == 0 and int((mit.age["0"] == 0).sum()) == 1
    assert int((mit.age["1"] == 0).sum()) == 1
    assert mit.budget[0] == pytest.approx(0.6)


# --------------------------------------------------------------------------------------------- exact resume
@pytest.mark.parametrize("name", MITIGATORS)
def test_state_dict_round_trip_gives_identical_continuation(name):
    torch.manual_seed(11)
    model = MLP(model_activation(name))
    opts = FAST.get(name, {})
    mit = build_mitigator(name, model, lr=1e-2, strength=STRONG.get(name), **opts)
    data = batches(8)
    train(model, mit, data[:4])
    buffer = io.BytesIO()  # through torch.save / torch.load (weights_only, the default), as a checkpoint would
    torch.save((model.state_dict(), mit.optimizer.state_dict(), mit.state_dict()), buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    train(model, mit, data[4:], start=4)
    reference = flat(model)

    torch.manual_seed(999)  # a different process state: nothing may depend on it
    model2 = MLP(model_activation(name))
    mit2 = build_mitigator(name, model2, lr=1e-2, strength=STRONG.get(name), seed=5, **opts)
    model2.load_state_dict(saved[0])
    mit2.optimizer.load_state_dict(saved[1])
    mit2.load_state_dict(saved[2])
    train(model2, mit2, data[4:], start=4)
    assert torch.equal(flat(model2), reference)


def test_load_state_dict_rejects_another_mitigators_state():
    sd = build_mitigator("l2", MLP(), 1e-3).state_dict()
    with pytest.raises(ValueError, match="l2"):
        build_mitigator("l2-init", MLP(), 1e-3).load_state_dict(sd)


# --------------------------------------------------------------------------------------------- ReDo / CBP beyond MLPs
@pytest.mark.parametrize("activation", ["relu", "crelu"])
def test_redo_recycles_a_dead_resnet_channel_and_keeps_the_function(activation):
    torch.manual_seed(13)
    model = build_model("resnet18", (3, 8, 8), 4, activation=activation)
    mit = build_mitigator("redo", model, lr=1e-3, strength=0.0, frequency=1)
    assert len(mit.blocks) == 8 and all(b.init == "kaiming-fan-out" for b in mit.blocks)
    block = model.body.layer2[1]
    data = [(torch.randn(16, 3, 8, 8), torch.randint(0, 4, (16,))) for _ in range(2)]
    train(model, mit, data)  # moments become non-zero (ReDo runs at step 1 too)
    with torch.no_grad():  # channel 5: γ = 0 and β = −1 (relu) / 0 (crelu): its activation is 0 for every input
        block.bn1.weight[5], block.bn1.bias[5] = 0.0, (-1.0 if activation == "relu" else 0.0)
    x = torch.randn(16, 3, 8, 8)
    model.eval()
    y0 = model(x).detach()
    model.train()
    conv1, conv2 = block.conv1.weight.detach().clone(), block.conv2.weight.detach().clone()
    mit.after_step(2, x)
    assert mit.last_recycled[3] >= 1
    assert not torch.equal(block.conv1.weight[5], conv1[5])
    std = math.sqrt(2 / (block.conv1.out_channels * 9))  # torchvision's kaiming normal, fan out
    assert 0.5 * std < float(block.conv1.weight[5].detach().std()) < 1.5 * std
    assert block.bn1.weight[5] == 1 and block.bn1.bias[5] == 0
    assert block.bn1.running_mean[5] == 0 and block.bn1.running_var[5] == 1
    width = block.conv1.out_channels
    cols = [5, 5 + width] if activation == "crelu" else [5]
    assert (block.conv2.weight[:, cols] == 0).all()
    assert (mit.optimizer.state[block.conv1.weight]["exp_avg"][5] == 0).all()
    assert (mit.optimizer.state[block.conv2.weight]["exp_avg_sq"][:, cols] == 0).all()
    keep = [i for i in range(conv2.shape[1]) if i not in cols]
    torch.testing.assert_close(block.conv2.weight[:, keep], conv2[:, keep])
    model.eval()
    torch.testing.assert_close(model(x).detach(), y0)  # the recycled channel's outgoing weights are zero


def test_redo_record_pass_leaves_batch_norm_statistics_alone():
    torch.manual_seed(14)
    model = build_model("resnet18", (3, 8, 8), 4)
    mit = build_mitigator("redo", model, lr=1e-3, strength=0.0, frequency=1)
    stats = {n: b.clone() for n, b in model.named_buffers()}
    mit.after_step(1, torch.randn(8, 3, 8, 8))
    assert model.training
    for n, b in model.named_buffers():
        assert torch.equal(b, stats[n]), n


def test_redo_and_cbp_recycle_vit_mlp_units():
    torch.manual_seed(15)
    model = build_model("vit-tiny", (1, 8, 8), 3, activation="crelu")
    mlp = model.body.encoder.layers[1].mlp
    width = mlp[0].out_features
    with torch.no_grad():
        mlp[0].weight[7], mlp[0].bias[7] = 0.0, 0.0  # both CReLU halves of unit 7 are 0
    x = torch.randn(6, 1, 8, 8)
    y0 = model.eval()(x).detach()
    model.train()
    redo = build_mitigator("redo", model, lr=1e-3, strength=0.0, frequency=1)
    assert len(redo.blocks) == 12 and all(b.init == "xavier" and b.crelu for b in redo.blocks)
    redo.after_step(1, x)
    assert redo.last_recycled == [0, 1] + [0] * 10
    bound = math.sqrt(6 / (mlp[0].in_features + width))
    w7, b7 = mlp[0].weight[7].detach(), mlp[0].bias[7].detach()
    assert 0 < float(w7.abs().max()) <= bound and abs(float(b7)) < 1e-4
    assert (mlp[3].weight[:, [7, 7 + width]] == 0).all()
    torch.testing.assert_close(model.eval()(x).detach(), y0)

    model.train()
    cbp = build_mitigator("cbp", model, lr=1e-3, strength=0.0, decay=0.9)
    y = torch.randint(0, 3, (6,))
    with torch.no_grad():  # unit activity of the training forward pass (dropout is 0), by hand
        h = model.body._process_input(x)
        h = torch.cat([model.body.class_token.expand(6, -1, -1), h], dim=1) + model.body.encoder.pos_embedding
        layer0 = model.body.encoder.layers[0]
        z = h + layer0.self_attention(*(3 * [layer0.ln_1(h)]), need_weights=False)[0]
        pre = layer0.mlp[0](layer0.ln_2(z))
        a = torch.cat([pre.relu(), (-pre).relu()], -1).abs().mean((0, 1))
        a = 0.5 * (a[:width] + a[width:])
        w = layer0.mlp[3].weight.abs().sum(0)
    train(model, cbp, [(x, y)])
    torch.testing.assert_close(cbp.utility["0"], 0.1 * a * (w[:width] + w[width:]), rtol=1e-4, atol=1e-6)
