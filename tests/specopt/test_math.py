"""Property tests of the singular-value math against independent computations (torch.linalg, autograd)."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import specopt
from specopt import functional as F

from .conftest import matrix_with_spectrum

shapes = st.tuples(st.integers(1, 24), st.integers(1, 24))
log_scales = st.floats(-3, 3)


@given(shape=shapes, log_scale=log_scales, seed=st.integers(0, 10_000), cond=st.floats(0, 6))
def test_power_iteration_never_exceeds_true_sigma(shape, log_scale, seed, cond):
    rows, cols = shape
    r = min(rows, cols)
    g = torch.Generator().manual_seed(seed)
    spectrum = (10**log_scale) * torch.logspace(0, -cond, r, dtype=torch.float64)
    w = matrix_with_spectrum(spectrum, rows, cols, seed).float()
    true_sigma = torch.linalg.matrix_norm(w.double(), ord=2)
    u = torch.randn(rows, generator=g)
    v = torch.randn(cols, generator=g)
    for iters in (1, 3):
        u, v, sigma, ok = F.power_iteration(w, u / u.norm(), v / v.norm(), iters)
        assert bool(ok)
        assert sigma.item() <= true_sigma.item() * (1 + 1e-5) + 1e-30
        assert abs(u.norm().item() - 1) < 1e-5 and abs(v.norm().item() - 1) < 1e-5


@given(shape=shapes, log_scale=log_scales, seed=st.integers(0, 10_000), gap=st.floats(0.05, 0.9))
def test_power_iteration_converges_to_true_sigma(shape, log_scale, seed, gap):
    rows, cols = shape
    r = min(rows, cols)
    spectrum = torch.linspace(1.0, 1.0 - gap, r, dtype=torch.float64) * 10**log_scale
    spectrum[1:] = spectrum[1:] * (1 - gap)  # σ2/σ1 <= 1 - gap
    w = matrix_with_spectrum(spectrum, rows, cols, seed).float()
    true_sigma = torch.linalg.matrix_norm(w.double(), ord=2).item()
    u, v = F.initial_vectors(rows, cols, w.device)
    _, _, sigma, _ = F.power_iteration(w, u, v, 400)
    assert sigma.item() == pytest.approx(true_sigma, rel=1e-4)


@given(shape=shapes, seed=st.integers(0, 10_000), top=st.floats(0.1, 4.0), k=st.sampled_from([1, 2, 4]))
def test_matrix_direction_equals_autograd_of_penalty(shape, seed, top, k):
    rows, cols = shape
    r = min(rows, cols)
    spectrum = torch.linspace(top, 0.3 * top, r, dtype=torch.float64)  # σ2/σ1 <= 1 - 0.7/r·... (separated)
    if r > 1:
        spectrum[1:] = spectrum[1:] * 0.6
    w = matrix_with_spectrum(spectrum, rows, cols, seed)
    # independent: autograd through the exact top singular value
    wr = w.clone().requires_grad_(True)
    ((torch.linalg.svdvals(wr)[0] ** k - 1) ** 2).backward()
    u, v = F.initial_vectors(rows, cols, w.device)
    u, v, sigma, _ = F.power_iteration(w.float(), u, v, 300)
    direction = F.matrix_coefficient(sigma.double(), k) * torch.outer(u.double(), v.double())
    # float32 power iteration: σ̂ carries ~1e-7 relative error, so compare on the scale of ∂R/∂σ's two factors
    scale = 2 * k * max(top, 1.0) ** (2 * k - 1)
    torch.testing.assert_close(direction / scale, wr.grad / scale, atol=1e-5, rtol=0)


@given(n=st.integers(1, 64), log_scale=st.floats(-2, 1), k=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 999))
def test_bias_and_scale_directions_equal_autograd(n, log_scale, k, seed):
    g = torch.Generator().manual_seed(seed)
    b = (torch.randn(n, generator=g, dtype=torch.float64) * 10**log_scale).requires_grad_(True)
    (torch.linalg.vector_norm(b) ** (2 * k)).backward()
    torch.testing.assert_close(F.bias_direction(b.detach(), k).double(), b.grad, rtol=1e-4, atol=1e-6)
    gamma = (1 + torch.randn(n, generator=g, dtype=torch.float64) * 10**log_scale).requires_grad_(True)
    ((gamma - 1) ** 2).sum().backward()
    torch.testing.assert_close(F.scale_direction(gamma.detach()).double(), gamma.grad, rtol=1e-5, atol=1e-6)


def _set_spectrum(linear: nn.Linear, top: float, seed: int) -> None:
    rows, cols = linear.weight.shape
    r = min(rows, cols)
    spectrum = torch.linspace(top, 0.2 * top, r) * torch.tensor([1.0] + [0.5] * (r - 1))
    with torch.no_grad():
        linear.weight.copy_(matrix_with_spectrum(spectrum, rows, cols, seed).float())


@given(seed=st.integers(0, 10_000), top=st.floats(0.3, 3.0), fraction=st.floats(1e-3, 1.0), k=st.sampled_from([1, 2]))
def test_spectral_sgd_step_equals_sgd_on_coupled_loss(seed, top, fraction, k):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.ReLU(), nn.Linear(5, 3))
    _set_spectrum(model[0], top, seed)
    _set_spectrum(model[3], 1.5 * top, seed + 1)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
    reference = [p.detach().clone().double().requires_grad_(True) for p in model.parameters()]
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    lr = 0.05
    # λ up to 1, but small enough that no tensor's gradient step on R crosses its target (exact σ1 from an SVD):
    # there the truncated spectral step must be exactly the gradient step
    sigmas = [torch.linalg.svdvals(p.detach())[0].item() for p in (reference[0], reference[4])]
    limits = [abs(s - 1) / (lr * 2 * k * s ** (k - 1) * abs(s**k - 1)) for s in sigmas if abs(s - 1) > 1e-6]
    bias_rates = [lr * 2 * k * torch.linalg.vector_norm(b.detach()).item() ** (2 * k - 2) for b in reference[1::2]]
    limits += [1 / c for c in bias_rates if c > 0]
    lam = fraction * min([1.0, 1 / (2 * lr)] + limits)

    # independent reference: SGD on J + λR with R from exact singular values, all in float64
    w0, b0, g, beta, w1, b1 = reference
    h = torch.relu(nn.functional.layer_norm(x.double() @ w0.T + b0, (5,), g, beta))
    loss = nn.functional.cross_entropy(h @ w1.T + b1, y)
    penalty = sum((torch.linalg.svdvals(w)[0] ** k - 1) ** 2 for w in (w0, w1))
    penalty = penalty + sum(torch.linalg.vector_norm(b) ** (2 * k) for b in (b0, beta, b1)) + ((g - 1) ** 2).sum()
    (loss + lam * penalty).backward()
    expected = [(p - lr * p.grad).detach() for p in reference]

    opt = specopt.Spectral(torch.optim.SGD(specopt.param_groups(model), lr=lr), strength=lam, k=k, init_iterations=300)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    got = [p.detach().double() for p in model.parameters()]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@given(top=st.one_of(st.floats(0.1, 0.9), st.floats(1.1, 5.0)), seed=st.integers(0, 999), k=st.sampled_from([1, 2, 4]))
def test_small_decoupled_step_moves_sigma_toward_one(top, seed, k):
    layer = nn.Linear(7, 5)
    _set_spectrum(layer, top, seed)
    before = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
    # "small": the rank-one step lr·λ·2kσ^{k-1}|σ^k-1| moves σ1 by at most a tenth of its distance to 1
    lr = 0.1 * abs(before - 1) / (2 * k * before ** (k - 1) * abs(before**k - 1))
    opt = specopt.Spectral(torch.optim.SGD([layer.weight], lr=lr), strength=1.0, k=k)
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    after = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
    assert abs(after - 1) < abs(before - 1)
    assert (after - 1) * (before - 1) > 0  # small step: no overshoot


@given(n=st.integers(1, 32), k=st.sampled_from([1, 2]), seed=st.integers(0, 999))
def test_bias_shrinks_toward_zero_and_scale_toward_one(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    norm = nn.LayerNorm(n)
    with torch.no_grad():
        norm.weight.copy_(1 + torch.randn(n, generator=g))
        norm.bias.copy_(torch.randn(n, generator=g) * 0.5)
    gamma0, beta0 = norm.weight.detach().clone(), norm.bias.detach().clone()
    lr, lam = 1e-2, 0.5
    opt = specopt.SpectralAdam(specopt.param_groups(norm), lr=lr, spectral_strength=lam, k=k)
    for p in norm.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # Adam's update is 0 for zero gradients: only the spectral step acts
    expected_gamma = gamma0 - lr * lam * 2 * (gamma0 - 1)
    expected_beta = beta0 - lr * lam * 2 * k * beta0.norm() ** (2 * k - 2) * beta0
    torch.testing.assert_close(norm.weight.detach(), expected_gamma)
    torch.testing.assert_close(norm.bias.detach(), expected_beta)
    assert (norm.weight.detach() - 1).abs().sum() <= (gamma0 - 1).abs().sum()
    assert norm.bias.detach().norm() <= beta0.norm()


OPTIMIZERS = {  # zero gradients: every base update is 0, only the spectral step acts
    "SpectralAdam": lambda params, lr, lam, k: specopt.SpectralAdam(params, lr=lr, spectral_strength=lam, k=k),
    "Spectral(SGD)": lambda params, lr, lam, k: specopt.Spectral(torch.optim.SGD(params, lr=lr, momentum=0.9),
                                                                 strength=lam, k=k),
    "Spectral(RMSprop)": lambda params, lr, lam, k: specopt.Spectral(torch.optim.RMSprop(params, lr=lr),
                                                                     strength=lam, k=k),
}
between = st.sampled_from(sorted(OPTIMIZERS))


def _assert_between(after: float, before: float, target: float, what: str, rel: float = 1e-4) -> None:
    lo, hi = min(before, target), max(before, target)
    slack = rel * max(hi, 1e-30) + 1e-7
    assert lo - slack <= after <= hi + slack, f"{what}: {before:.6g} → {after:.6g}, not between it and {target}"


@given(
    log_sigma=st.floats(-3, 4), log_lr_strength=st.floats(-6, 1), k=st.sampled_from([1, 2, 4, 8]),
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)), name=between, seed=st.integers(0, 999),
)
def test_matrix_step_never_overshoots_for_any_sigma_lr_and_strength(log_sigma, log_lr_strength, k, shape, name, seed):
    top = 10.0**log_sigma
    r = min(shape)
    spectrum = [top] + [top * 0.5 * (1 - i / r) for i in range(1, r)]  # a gap, so 16 warm-up iterations converge
    weight = nn.Parameter(matrix_with_spectrum(spectrum, *shape, seed=seed).float())
    lr = 1e-3
    opt = OPTIMIZERS[name]([weight], lr, 10.0**log_lr_strength / lr, k)
    before = torch.linalg.matrix_norm(weight.detach().double(), ord=2).item()
    for step in range(3):
        weight.grad = torch.zeros_like(weight)
        opt.step()
        after = torch.linalg.matrix_norm(weight.detach().double(), ord=2).item()
        _assert_between(after, before, 1.0, f"σ1 at step {step}")
        before = after


@given(
    log_norm=st.floats(-3, 4), log_lr_strength=st.floats(-6, 1), k=st.sampled_from([1, 2, 4, 8]),
    n=st.integers(1, 16), name=between, seed=st.integers(0, 999),
)
def test_bias_and_scale_steps_never_overshoot(log_norm, log_lr_strength, k, n, name, seed):
    g = torch.Generator().manual_seed(seed)
    norm = nn.LayerNorm(n)
    direction = torch.randn(n, generator=g)
    with torch.no_grad():
        norm.bias.copy_(direction / direction.norm() * 10.0**log_norm)
        norm.weight.copy_(1 + torch.randn(n, generator=g) * 10.0**log_norm)
    lr = 1e-3
    opt = OPTIMIZERS[name](specopt.param_groups(norm), lr, 10.0**log_lr_strength / lr, k)
    for step in range(3):
        beta0, gamma0 = norm.bias.detach().double().clone(), norm.weight.detach().double().clone()
        for p in norm.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        _assert_between(norm.bias.detach().double().norm().item(), beta0.norm().item(), 0.0, f"‖b‖ at step {step}")
        for i, (after, before) in enumerate(zip(norm.weight.detach().double().tolist(), gamma0.tolist())):
            _assert_between(after, before, 1.0, f"γ[{i}] at step {step}")


@given(log_sigma=st.floats(1.5, 4), k=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 999))
def test_a_large_step_lands_on_the_target_instead_of_diverging(log_sigma, k, seed):
    """The issue's case: σ1 = 25 at lr 1e-3, λ = 1 went to 1e26 in four steps; now σ1 of the top direction lands on
    1 (the next singular value, below it, stays), and nothing is ever non-finite."""
    top = 10.0**log_sigma
    weight = nn.Parameter(matrix_with_spectrum([top, 0.5], 16, 16, seed=seed).float())
    opt = specopt.SpectralAdam([weight], lr=1e-3, spectral_strength=1.0, k=k)
    weight.grad = torch.zeros_like(weight)
    opt.step()
    sigmas = torch.linalg.svdvals(weight.detach().double())
    gradient_step = 1e-3 * 2 * k * top ** (k - 1) * (top**k - 1)
    float32 = 1e-6 * top  # W − αuvᵀ cancels in float32: the error scales with σ1 before the step
    if gradient_step >= top - 1:  # the gradient step would cross 1: truncated onto it
        assert sigmas[0].item() == pytest.approx(1.0, abs=float32)
    else:
        assert sigmas[0].item() == pytest.approx(top - gradient_step, rel=1e-4, abs=float32)
    assert sigmas[1].item() == pytest.approx(0.5, rel=1e-4)


def _conv_operator_norm(weight: torch.Tensor, size: int, stride: int, padding: int) -> float:
    """Exact operator norm of x ↦ conv2d(x): the Jacobian as an explicit matrix, then its spectral norm."""
    c_in = weight.shape[1]
    x = torch.zeros(1, c_in, size, size, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda t: nn.functional.conv2d(t, weight.double(), stride=stride, padding=padding).flatten(), x
    )
    return torch.linalg.matrix_norm(jac.reshape(jac.shape[0], -1), ord=2).item()


@given(
    c_out=st.integers(1, 4), c_in=st.integers(1, 3), kernel=st.sampled_from([1, 2, 3]),
    stride=st.sampled_from([1, 2]), padding=st.sampled_from([0, 1]), seed=st.integers(0, 999),
)
def test_reshaped_conv_sigma_brackets_the_convolution_operator_norm(c_out, c_in, kernel, stride, padding, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c_out, c_in, kernel, kernel, generator=g, dtype=torch.float64)
    reshaped = torch.linalg.matrix_norm(weight.reshape(c_out, -1), ord=2).item()
    operator = _conv_operator_norm(weight, kernel + 2 * padding + stride + 1, stride, padding)
    overlap = math.ceil(kernel / stride) ** 2  # max number of output positions that read one input pixel
    assert reshaped <= operator * (1 + 1e-9)  # one full patch alone already reaches σ1 of the reshaped kernel
    assert operator <= math.sqrt(overlap) * reshaped * (1 + 1e-9)  # Tsuzuku et al. 2018
    # and the optimizer regularizes exactly the reshaped norm
    conv = nn.Conv2d(c_in, c_out, kernel)
    with torch.no_grad():
        conv.weight.copy_(weight.float())
    norms = specopt.spectral_norms(conv)
    assert norms["weight"].item() == pytest.approx(reshaped, rel=1e-5)


def test_coupled_penalty_gradient_flows_through_sigma():
    layer = nn.Linear(6, 4, bias=False)
    _set_spectrum(layer, 2.0, 3)
    penalty = specopt.SpectralPenalty(layer, init_iterations=300)
    penalty().backward()
    got = layer.weight.grad.clone()
    w = layer.weight.detach().double().requires_grad_(True)
    ((torch.linalg.svdvals(w)[0] ** 2 - 1) ** 2).backward()
    assert got.abs().max() > 1.0  # not silently zero (σ computed under no_grad would give 0)
    torch.testing.assert_close(got.double(), w.grad, atol=1e-4, rtol=1e-4)


def test_spectral_penalty_value_matches_exact_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    _set_spectrum(model[0], 1.7, 0)
    _set_spectrum(model[2], 0.6, 1)
    expected = sum((torch.linalg.matrix_norm(m.weight.double(), ord=2) ** 2 - 1) ** 2 for m in (model[0], model[2]))
    expected = expected + sum(b.double().norm() ** 4 for b in (model[0].bias, model[1].bias, model[2].bias))
    expected = expected + ((model[1].weight.double() - 1) ** 2).sum()
    got = specopt.SpectralPenalty(model, init_iterations=300)()
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
