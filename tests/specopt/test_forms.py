"""The pull's named forms (issue #30): one-sided, Adam-preconditioned, and a strength of its own for the output layer.
Each is checked against an independent computation (autograd of the restricted regularizer with σ1 from
torch.linalg, torch.optim.Adam's own state, the model's own declaration of its last layer)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import specopt
from specopt import StackedSpectralAdam

from .conftest import matrix_with_spectrum


def _net(seed: int, top: float) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3))
    r = min(5, 6)
    with torch.no_grad():
        net[0].weight.copy_(matrix_with_spectrum(torch.linspace(top, 0.2 * top, r), 5, 6, seed).float())
        net[3].weight.copy_(matrix_with_spectrum(torch.linspace(1 / top, 0.1, 3), 3, 5, seed + 1).float())
        net[1].weight.uniform_(0.5, 1.5)
    return net


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), top=st.sampled_from([0.4, 0.7, 1.6, 2.5]), k=st.sampled_from([1, 2]))
def test_one_sided_sgd_step_equals_sgd_on_the_restricted_regularizer(seed, top, k):
    """Spectral(SGD, pull="one-sided") is one SGD step on J + λR⁺, R⁺ = Σ max(σ1^k − 1, 0)² + Σ‖b‖^{2k} +
    Σ max(γ − 1, 0)², with σ1 from torch.linalg (float64 autograd): matrices below 1 and scales below 1 are left
    alone, the others pulled as by the paper's R."""
    model = _net(seed, top)
    reference = [p.detach().clone().double().requires_grad_(True) for p in model.parameters()]
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    lr, lam = 0.05, 0.05  # small: no gradient step crosses its target here, so the truncation never acts
    w0, b0, g, beta, w1, b1 = reference
    h = torch.relu(nn.functional.layer_norm(x.double() @ w0.T + b0, (5,), g, beta))
    loss = nn.functional.cross_entropy(h @ w1.T + b1, y)
    penalty = sum((torch.linalg.matrix_norm(w, ord=2) ** k - 1).clamp_min(0) ** 2 for w in (w0, w1))
    penalty = penalty + sum(torch.linalg.vector_norm(b) ** (2 * k) for b in (b0, beta, b1))
    penalty = penalty + ((g - 1).clamp_min(0) ** 2).sum()
    (loss + lam * penalty).backward()
    expected = [(p - lr * p.grad).detach() for p in reference]

    opt = specopt.Spectral(torch.optim.SGD(specopt.param_groups(model), lr=lr), strength=lam, k=k,
                           init_iterations=300, pull="one-sided")
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    for got, want in zip(model.parameters(), expected):
        torch.testing.assert_close(got.detach().double(), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("top", [0.3, 0.8])
def test_one_sided_pull_leaves_a_matrix_below_one_alone_and_two_sided_grows_it(top):
    def run(pull: str) -> float:
        lin = nn.Linear(7, 6, bias=False)
        with torch.no_grad():
            lin.weight.copy_(matrix_with_spectrum(torch.linspace(top, 0.1, 6), 6, 7, 3).float())
        opt = specopt.SpectralAdam(specopt.param_groups(lin), lr=1e-2, strength=5.0, pull=pull)
        for _ in range(50):
            lin.weight.grad = torch.zeros_like(lin.weight)  # Adam moves nothing: only the pull acts
            opt.step()
        return torch.linalg.matrix_norm(lin.weight.detach(), ord=2).item()

    assert run("one-sided") == pytest.approx(top, abs=1e-5)
    assert run("two-sided") > top + 0.05


def _adam_reference(model: nn.Module, grads: list[torch.Tensor], lr: float) -> tuple[list[torch.Tensor], dict]:
    """One torch.optim.Adam step on a copy of ``model``'s parameters: the new values and Adam's denominators
    √(v/(1 − β2)) + ε (step 1) per parameter, from torch's own state."""
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    adam = torch.optim.Adam(params, lr=lr)
    for p, g in zip(params, grads):
        p.grad = g.clone()
    adam.step()
    denominators = {}
    for i, p in enumerate(params):
        st = adam.state[p]
        denominators[i] = (st["exp_avg_sq"] / (1 - 0.999 ** st["step"].item())).sqrt() + 1e-8
    return [p.detach() for p in params], denominators


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preconditioned_step_is_adams_step_on_the_penalty_projected_on_u_v(seed):
    """SpectralAdam(precondition=True) − torch.optim.Adam = the rank-one step −ηλc(σ1)ρ u vᵀ on each matrix, with
    u, v, σ1 from torch.linalg.svd and ρ = Σ u_i² v_j² / D_ij from Adam's own √v̂ + ε; on biases and scales the
    element-wise step −ηλ c x / D (the coupled form's step under Adam, out of Adam's moments)."""
    model = _net(seed, 2.0)
    lr, lam, k = 1e-3, 1e-4, 2
    torch.manual_seed(seed + 100)
    grads = [torch.randn_like(p) * 10.0 ** torch.empty(p.shape).uniform_(-4, -1) for p in model.parameters()]
    adam_params, denominators = _adam_reference(model, grads, lr)
    before = [p.detach().clone() for p in model.parameters()]
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=lr, strength=lam, k=k, init_iterations=300,
                               precondition=True)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.clone()
    opt.step()
    names = [n for n, _ in model.named_parameters()]
    for i, (name, p) in enumerate(zip(names, model.parameters())):
        d = denominators[i]
        if p.dim() == 2:
            u_all, s, vh = torch.linalg.svd(before[i].double())
            u, v, sigma = u_all[:, 0], vh[0], s[0]
            c = 2 * k * sigma ** (k - 1) * (sigma**k - 1)
            rho = ((u**2)[:, None] * (v**2)[None, :] / d.double()).sum()
            alpha = torch.clamp(lr * lam * c * rho, min(0.0, sigma.item() - 1), max(0.0, sigma.item() - 1))
            expected = adam_params[i].double() - alpha * torch.outer(u, v)
        elif name == "1.weight":  # the LayerNorm scale: toward 1
            fraction = (lr * lam * 2 / d.double()).clamp(max=1.0)
            expected = adam_params[i].double() - fraction * (before[i].double() - 1)
        else:  # biases, toward 0: c = 2k‖b‖^{2k−2}
            c = 2 * k * before[i].double().norm() ** (2 * k - 2)
            fraction = (lr * lam * c / d.double()).clamp(max=1.0)
            expected = adam_params[i].double() - fraction * before[i].double()
        torch.testing.assert_close(p.detach().double(), expected, atol=1e-6, rtol=1e-5, msg=name)


def test_preconditioned_pull_is_weaker_where_the_loss_gradients_are_larger():
    """The point of the form: the same λ pulls a matrix with large gradients (a critic's) less than one with small
    gradients (a classifier under random labels), by the ratio of Adam's denominators."""
    moved = []
    for scale in (1e-4, 1e-1):
        lin = nn.Linear(6, 5, bias=False)
        with torch.no_grad():
            lin.weight.copy_(matrix_with_spectrum(torch.linspace(3.0, 0.5, 5), 5, 6, 0).float())
        opt = specopt.SpectralAdam(specopt.param_groups(lin), lr=1e-3, strength=1e-4, precondition=True,
                                   init_iterations=200)
        torch.manual_seed(0)
        grad = torch.randn(5, 6) * scale
        before = lin.weight.detach().clone()
        reference, _ = _adam_reference(lin, [grad], 1e-3)
        lin.weight.grad = grad
        opt.step()
        moved.append((lin.weight.detach() - reference[0]).norm().item())
        assert (lin.weight.detach() - before).norm() > 0
    assert moved[0] > 100 * moved[1]


def test_stacked_forms_equal_spectral_adam_slice_by_slice():
    """StackedSpectralAdam(pull=, precondition=) is SpectralAdam with the same options on every slice (per-slice step
    counts; a qkv tensor, a scale and biases included)."""
    def model(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3),
                            nn.MultiheadAttention(6, 2, batch_first=True))
        with torch.no_grad():
            net[3].weight.mul_(4.0)
            net[1].weight.uniform_(0.5, 1.5)
        return net

    for form in (dict(pull="one-sided"), dict(precondition=True), dict(pull="one-sided", precondition=True)):
        models = [model(s) for s in range(3)]
        strengths = (0.0, 0.5, 3.0) if not form.get("precondition") else (0.0, 1e-4, 1e-2)
        refs = [specopt.SpectralAdam(specopt.param_groups(m), lr=1e-2, strength=lam, foreach=True, **form)
                for m, lam in zip(models, strengths)]
        tagged = [specopt.named_roles(m) for m in models]
        params = [nn.Parameter(torch.stack([t[i][1].detach() for t in tagged])) for i in range(len(tagged[0]))]
        opt = StackedSpectralAdam(params, [r for _, _, r in tagged[0]], lr=1e-2, strength=strengths, **form)
        for step in range(6):
            torch.manual_seed(step)
            grads = [torch.randn_like(p) * 1e-2 for p in params]
            for s, (m, ref) in enumerate(zip(models, refs)):
                for p, g in zip(m.parameters(), grads):
                    p.grad = g[s].clone()
                ref.step()
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
        for s, m in enumerate(models):
            for p, q in zip(params, m.parameters()):
                torch.testing.assert_close(p[s].detach(), q.detach(), atol=1e-6, rtol=1e-5, msg=str(form))


def test_head_strength_exempts_the_layer_the_model_declares_last():
    """param_groups(model, head=0): the output layer (the model's own last Linear, net[-1]) keeps its σ1 while the
    pull takes every other matrix to 1 (torch.linalg.matrix_norm)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        for m in net[::2]:
            m.weight.mul_(6.0)
    groups = specopt.param_groups(net, head=0.0)
    assert [id(p) for p in groups[-1]["params"]] == [id(net[-1].weight), id(net[-1].bias)]
    assert groups[-1]["spectral_strength"] == 0.0
    assert specopt.output_layer(net) == "4"
    head_sigma = torch.linalg.matrix_norm(net[-1].weight.detach(), ord=2).item()
    opt = specopt.SpectralAdam(groups, lr=1e-2, strength=10.0)
    for _ in range(300):
        for p in net.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    for m in net[:-1:2]:
        assert torch.linalg.matrix_norm(m.weight.detach(), ord=2).item() == pytest.approx(1.0, abs=0.02)
    assert torch.linalg.matrix_norm(net[-1].weight.detach(), ord=2).item() == pytest.approx(head_sigma, rel=1e-6)


@pytest.mark.parametrize("make, message", [
    (lambda ps: specopt.SpectralAdam(ps, pull="sideways"), "pull must be one of two-sided, one-sided"),
    (lambda ps: specopt.SpectralAdam(ps, precondition="yes"), "precondition must be True or False"),
    (lambda ps: specopt.Spectral(torch.optim.SGD(ps, lr=0.1), precondition=True), "Adam-family base optimizer"),
    (lambda ps: StackedSpectralAdam([torch.zeros(2, 3, 3, requires_grad=True)], ["matrix"], pull="up"),
     "pull must be one of"),
])
def test_bad_forms_are_one_line_errors(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make(list(nn.Linear(3, 3).parameters()))
    assert "\n" not in str(info.value)


def test_head_of_a_model_without_a_matrix_is_a_one_line_error():
    with pytest.raises(ValueError, match="needs a model with a matrix"):
        specopt.param_groups(nn.LayerNorm(4), head=0.0)


@pytest.mark.parametrize("sizes, axis", [((2, 3, 3), 1), ((4, 2, 2), 0)])
def test_preconditioned_step_on_a_fused_tensor_is_adams_step_projected_on_each_block(sizes, axis):
    """A qkv tensor of column blocks (GPT-2's Conv1D c_attn layout) or unequal row blocks (grouped-query attention):
    each block j moves by −ηλc(σ1_j)ρ_j u_j v_jᵀ, with u_j, v_j, σ1_j from torch.linalg.svd of the block (column blocks
    as the row blocks of Wᵀ) and ρ_j from the block's slice of torch.optim.Adam's √v̂ + ε."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 8) * 0.8)
    lr, lam, k = 1e-3, 1e-4, 2
    grad = torch.randn(8, 8) * 1e-3
    reference = nn.Parameter(w.detach().clone())
    adam = torch.optim.Adam([reference], lr=lr)
    reference.grad = grad.clone()
    adam.step()
    d = (adam.state[reference]["exp_avg_sq"] / (1 - 0.999)).sqrt() + 1e-8
    before = w.detach().clone()
    group = {"params": [w], "roles": ["qkv"], "blocks": [{"sizes": sizes, "axis": axis}]}
    opt = specopt.SpectralAdam([group], lr=lr, strength=lam, k=k, init_iterations=500, precondition=True)
    w.grad = grad.clone()
    opt.step()
    expected = reference.detach().double().clone()
    view, d_view, b_view = (expected.t(), d.t(), before.t()) if axis else (expected, d, before)
    start = 0
    for size in sizes:
        rows = slice(start, start + size)
        u_all, s, vh = torch.linalg.svd(b_view[rows].double())
        u, v, sigma = u_all[:, 0], vh[0], s[0].item()
        c = 2 * k * sigma ** (k - 1) * (sigma**k - 1)
        rho = ((u**2)[:, None] * (v**2)[None, :] / d_view[rows].double()).sum().item()
        alpha = min(max(lr * lam * c * rho, min(0.0, sigma - 1)), max(0.0, sigma - 1))
        view[rows] -= alpha * torch.outer(u, v)
        start += size
    torch.testing.assert_close(w.detach().double(), expected, atol=1e-6, rtol=1e-5)


def test_output_layer_is_the_one_the_model_declares_also_when_tied():
    """head= takes the layer the model's own code calls its output: timm's get_classifier(), HF's
    get_output_embeddings() (GPT-2's lm_head, whose weight is the tied input embedding)."""
    transformers = pytest.importorskip("transformers")
    timm = pytest.importorskip("timm")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50,
                                                                n_positions=16))
    names = {id(m): n for n, m in gpt2.named_modules()}
    assert specopt.output_layer(gpt2) == names[id(gpt2.get_output_embeddings())] == "lm_head"
    head_group = specopt.param_groups(gpt2, head=0.0)[-1]
    assert [id(p) for p in head_group["params"]] == [id(gpt2.get_output_embeddings().weight)]
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=32, depth=1)
    names = {id(m): n for n, m in vit.named_modules()}
    assert specopt.output_layer(vit) == names[id(vit.get_classifier())]


def test_stacked_preconditioned_fused_tensor_equals_spectral_adam_per_slice():
    torch.manual_seed(1)
    spec = {"sizes": (2, 3, 3), "axis": 1}
    slices = [nn.Parameter(torch.randn(8, 8) * 0.8) for _ in range(2)]
    refs = [specopt.SpectralAdam([{"params": [w], "roles": ["qkv"], "blocks": [spec]}], lr=1e-2, strength=1e-3,
                                 precondition=True) for w in slices]
    stacked = nn.Parameter(torch.stack([w.detach() for w in slices]))
    opt = StackedSpectralAdam([stacked], ["qkv"], lr=1e-2, strength=1e-3, blocks=[spec], precondition=True)
    for step in range(4):
        grad = torch.randn(2, 8, 8) * 1e-3
        for s, (w, ref) in enumerate(zip(slices, refs)):
            w.grad = grad[s].clone()
            ref.step()
        stacked.grad = grad
        opt.step()
    for s, w in enumerate(slices):
        torch.testing.assert_close(stacked[s].detach(), w.detach(), atol=1e-6, rtol=1e-5)
