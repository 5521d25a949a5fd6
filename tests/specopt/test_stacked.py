"""StackedSpectralAdam equals SpectralAdam (an independent implementation: torch.optim.adam + specopt.functional's
foreach path) on every slice, with per-slice strengths, resets and a save/load in between."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import specopt
from specopt import StackedSpectralAdam

STRENGTHS = (0.0, 0.5, 3.0)


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3),
                        nn.MultiheadAttention(6, 2, batch_first=True))
    with torch.no_grad():
        net[3].weight.mul_(4.0)  # σ1 well above 1: the truncated step is exercised
    return net


def stacked_copy(models: list[nn.Module]) -> tuple[list[nn.Parameter], list[str]]:
    tagged = [specopt.named_roles(m) for m in models]
    params = [nn.Parameter(torch.stack([t[i][1].detach() for t in tagged])) for i in range(len(tagged[0]))]
    return params, [role for _, _, role in tagged[0]]


def random_grads(params, step: int, slice_: int | None = None):
    torch.manual_seed(1000 + step)
    grads = [torch.randn(p.shape[1:] if slice_ is None else p.shape) for p in params]
    return grads


def test_each_slice_equals_spectral_adam_with_resets_and_reload():
    models = [model(s) for s in range(3)]
    refs = [specopt.SpectralAdam(specopt.param_groups(m), lr=1e-2, strength=lam, foreach=True)
            for m, lam in zip(models, STRENGTHS)]
    params, roles = stacked_copy(models)
    assert "qkv" in roles and "scale" in roles and "bias" in roles
    opt = StackedSpectralAdam(params, roles, lr=1e-2, strength=STRENGTHS)
    for step in range(8):
        torch.manual_seed(step)
        grads = [torch.randn_like(p) for p in params]
        for s, (m, ref) in enumerate(zip(models, refs)):
            for p, g in zip(m.parameters(), grads):
                p.grad = g[s].clone()
            ref.step()
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        if step == 3:  # slice 1 restarts: new weights, a fresh optimizer
            with torch.no_grad():
                fresh = model(99)
                for p, q in zip(models[1].parameters(), fresh.parameters()):
                    p.copy_(q)
                for p, q in zip(params, fresh.parameters()):
                    p[1].copy_(q)
            refs[1] = specopt.SpectralAdam(specopt.param_groups(models[1]), lr=1e-2, strength=STRENGTHS[1],
                                           foreach=True)
            opt.reset([False, True, False])
        if step == 5:  # save and load mid-run
            saved = opt.state_dict()
            opt = StackedSpectralAdam(params, roles, lr=1e-2, strength=STRENGTHS)
            opt.load_state_dict(saved)
        for s, m in enumerate(models):
            for p, q in zip(params, m.parameters()):
                torch.testing.assert_close(p[s], q, rtol=1e-5, atol=1e-6)
    sigma = torch.linalg.matrix_norm(params[roles.index("matrix")].detach(), ord=2)
    assert sigma.shape == (3,)


def test_strength_zero_is_plain_adam():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(2, 6, 4) * 3)
    ref = [nn.Parameter(w[i].detach().clone()) for i in range(2)]
    opt = StackedSpectralAdam([w], ["matrix"], lr=0.1, strength=0.0)
    adams = [torch.optim.Adam([r], lr=0.1) for r in ref]
    for _ in range(5):
        g = torch.randn_like(w)
        w.grad = g
        opt.step()
        for i, (r, a) in enumerate(zip(ref, adams)):
            r.grad = g[i].clone()
            a.step()
    for i in range(2):
        torch.testing.assert_close(w[i], ref[i], rtol=1e-5, atol=1e-5)  # float rounding of lr 0.1 steps


def test_large_sigma_lands_on_one_per_slice():
    """The truncated step per slice, checked against torch.linalg.matrix_norm: σ1 = 25 at ηλ = 1 lands on 1."""
    u, _, vh = torch.linalg.svd(torch.randn(3, 16, 16))
    spectrum = torch.linspace(0.9, 0.1, 16).repeat(3, 1)
    spectrum[0, 0] = 25.0  # slice 0: σ1 = 25 over a spectrum below 1; slice 1: σ1 = 0.01; slice 2: λ = 0
    spectrum[1] = torch.linspace(0.01, 0.001, 16)
    w = nn.Parameter(u @ torch.diag_embed(spectrum) @ vh)
    opt = StackedSpectralAdam([w], ["matrix"], lr=1.0, strength=[1.0, 1.0, 0.0], init_iterations=200)
    before = torch.linalg.matrix_norm(w.detach(), ord=2)
    w.grad = torch.zeros_like(w)
    opt.step()
    after = torch.linalg.matrix_norm(w.detach(), ord=2)
    assert torch.isfinite(after).all()
    for s in range(2):  # between the old value and 1
        lo, hi = sorted((before[s].item(), 1.0))
        assert lo - 1e-3 <= after[s].item() <= hi + 1e-3
    assert abs(after[0].item() - 1.0) < 1e-2


@pytest.mark.parametrize("bad, message", [
    (dict(strength=[1.0, 2.0]), "strength must be one number or 3"),
    (dict(strength=-1.0), "strength must be one number or 3"),
    (dict(roles=["weird"]), "unknown role 'weird'"),
    (dict(k=0.5), "k must be a number >= 1"),
])
def test_bad_settings_are_one_line_errors(bad, message):
    kwargs = dict(params=[nn.Parameter(torch.zeros(3, 2, 2))], roles=["matrix"])
    kwargs.update(bad)
    with pytest.raises(ValueError, match=message):
        StackedSpectralAdam(**kwargs)
