"""SpectralAdam(one_pass=True): in a compiled step, Adam's update and the spectral step written as one expression
per tensor (specopt.functional.one_pass) take the step of the two halves (Adam, then the spectral step) up to float32
rounding; whatever it cannot write keeps the two halves exactly; σ1 still goes to 1 (torch.linalg); an eager step is
the two halves. Each test starts Dynamo afresh (compile_step compiles torch.optim's one step code object, which
keeps at most 8 graphs)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import specopt


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.LayerNorm(16), nn.ReLU(),
                         nn.Linear(16, 5))


def run(net: nn.Module, opt: torch.optim.Optimizer, steps: int, compiled: bool = False, seed: int = 1) -> None:
    step = specopt.compile_step(opt) if compiled else opt.step
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in net.parameters():
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(p.dtype)
        step()


def largest_difference(a: nn.Module, b: nn.Module) -> float:
    return max((pa - pb).abs().max().item() for pa, pb in zip(a.parameters(), b.parameters()))


SETTINGS = [
    (specopt.SpectralAdam, dict()),
    (specopt.SpectralAdam, dict(weight_decay=0.01)),  # Adam's coupled decay: w·W added to the gradient
    (specopt.SpectralAdamW, dict(weight_decay=0.01)),  # decoupled: W scaled by 1 − η·w first
    (specopt.SpectralAdam, dict(maximize=True, pull="one-sided", k=1)),
]


@pytest.mark.parametrize("cls, kwargs", SETTINGS)
def test_one_pass_takes_the_two_halves_step(cls, kwargs):
    a, b = model(), model()
    oa = cls(specopt.param_groups(a), lr=1e-2, strength=1.0, **kwargs)
    ob = cls(specopt.param_groups(b), lr=1e-2, strength=1.0, one_pass=True, **kwargs)
    run(a, oa, 4)  # the two halves, eagerly
    run(b, ob, 4, compiled=True)  # the first step eager, then one pass
    assert ob.defaults["one_pass"] and largest_difference(a, b) < 1e-6
    for pa, pb in zip(a.parameters(), b.parameters()):  # the same state: Adam's moments and the spectral vectors
        sa, sb = oa.state[pa], ob.state[pb]
        assert sa.keys() == sb.keys() and float(sa["step"]) == float(sb["step"]) == 4
        for key in sa:
            assert torch.allclose(sa[key], sb[key], rtol=1e-4, atol=1e-5), key  # u, v: W to rounding, iterated


def test_one_pass_acts_in_the_compiled_step_and_never_recompiles():
    a, b = model(), model()
    oa = specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0)
    ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, one_pass=True)
    torch._dynamo.reset()
    run(a, oa, 5)  # the two halves, eagerly
    step = specopt.compile_step(ob)
    gen = torch.Generator().manual_seed(1)
    for i in range(5):  # the first step eager, the second compiles, the rest reuse its graph
        for p in b.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        with torch._dynamo.config.patch(error_on_recompile=i >= 2):
            step()
    assert largest_difference(a, b) < 1e-6


@pytest.mark.parametrize("case", ["amsgrad", "bf16", "fused order", "closure"])
def test_what_one_pass_cannot_write_keeps_the_two_halves(case):
    """amsgrad and bf16 tensors: the two halves, bit for bit; the fused order: one pass writes Adam's half only; a
    closure: one pass as usual."""
    a, b = model(), model()
    if case == "bf16":
        a, b = a.to(torch.bfloat16), b.to(torch.bfloat16)
    kwargs = {"amsgrad": dict(amsgrad=True), "fused order": dict(fused_spectral=True)}.get(case, {})
    oa = specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0, **kwargs)
    ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, one_pass=True, **kwargs)
    if case == "closure":  # the closure runs before either half: one pass acts as without one
        for net, opt in ((a, oa), (b, ob)):
            x = torch.ones(3, 2, 6, 6)

            def closure(net=net, opt=opt):
                opt.zero_grad()
                loss = net(x).square().mean()
                loss.backward()
                return loss

            step = specopt.compile_step(opt, fullgraph=False) if opt is ob else opt.step  # backward: no graph
            for _ in range(3):
                step(closure)
        assert largest_difference(a, b) < 1e-6
        return
    if case == "fused order":  # the spectral half keeps the fused order; only Adam's half is one pass
        run(a, oa, 3)
        run(b, ob, 3, compiled=True)
        assert largest_difference(a, b) < 1e-6
        return
    run(a, oa, 3, compiled=True)
    torch._dynamo.reset()
    run(b, ob, 3, compiled=True)
    assert largest_difference(a, b) == 0.0


def test_one_pass_pulls_sigma_to_one():
    """Independent of the two-halves path: with a strong pull and no gradient signal, σ1 of every matrix (as
    torch.linalg computes it) goes to 1."""
    net = model()
    step = specopt.compile_step(specopt.SpectralAdam(specopt.param_groups(net), lr=1e-2, strength=100.0,
                                                     one_pass=True))
    for _ in range(200):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        step()
    for p in (net[0].weight, net[2].weight, net[5].weight):
        sigma = torch.linalg.matrix_norm(p.detach().reshape(p.shape[0], -1), ord=2).item()
        assert abs(sigma - 1.0) < 1e-3, sigma


def test_one_pass_must_be_a_bool():
    with pytest.raises(ValueError, match="one_pass must be True or False"):
        specopt.SpectralAdam(model().parameters(), one_pass="yes")


def test_an_eager_step_is_the_two_halves():
    a, b = model(), model()
    run(a, specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0), 3)
    run(b, specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, one_pass=True), 3)
    assert largest_difference(a, b) == 0.0
