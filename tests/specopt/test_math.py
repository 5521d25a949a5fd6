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
    (x,), c = F.vector_terms([b.detach().float()], "bias", k)
    torch.testing.assert_close((c[0] * x).double(), b.grad, rtol=1e-4, atol=1e-6)
    gamma = (1 + torch.randn(n, generator=g, dtype=torch.float64) * 10**log_scale).requires_grad_(True)
    ((gamma - 1) ** 2).sum().backward()
    (x,), c = F.vector_terms([gamma.detach().float()], "scale", k)
    torch.testing.assert_close((c[0] * x).double(), gamma.grad, rtol=1e-5, atol=1e-6)


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
    opt = specopt.SpectralAdam(specopt.param_groups(norm), lr=lr, strength=lam, k=k)
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
    "SpectralAdam": lambda params, lr, lam, k: specopt.SpectralAdam(params, lr=lr, strength=lam, k=k),
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
    opt = specopt.SpectralAdam([weight], lr=1e-3, strength=1.0, k=k)
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


# ------------------------------------------------------------------------------------------ role qkv: three blocks
def _qkv_weight(dim: int, tops, seed: int, cols: int | None = None) -> torch.Tensor:
    """[W_q; W_k; W_v], block j with σ1 = tops[j] and a spectral gap (σ2 ≤ σ1/2), float64."""
    cols = dim if cols is None else cols
    r = min(dim, cols)
    blocks = [matrix_with_spectrum([top] + [0.5 * top * (1 - i / r) for i in range(1, r)], dim, cols, seed=seed + j)
              for j, top in enumerate(tops)]
    return torch.cat(blocks)


def _exact_penalty(tensors: list[tuple[torch.Tensor, str]], k: float) -> torch.Tensor:
    """R from exact singular values (torch.linalg.svdvals), with the roles written out by the caller."""
    r = torch.zeros((), dtype=torch.float64)
    for p, role in tensors:
        if role == "matrix":
            r = r + (torch.linalg.svdvals(p)[0] ** k - 1) ** 2
        elif role == "qkv":
            r = r + sum((torch.linalg.svdvals(block)[0] ** k - 1) ** 2 for block in p.chunk(3, dim=0))
        elif role == "bias":
            r = r + torch.linalg.vector_norm(p) ** (2 * k)
    return r


class _FusedAttention(nn.Module):
    """timm-style attention: one Linear named ``qkv`` whose rows are [W_q; W_k; W_v]."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, dtype=torch.float64)
        self.proj = nn.Linear(dim, dim, dtype=torch.float64)


qkv_tops = st.lists(st.one_of(st.floats(0.2, 0.9), st.floats(1.1, 3.0)), min_size=3, max_size=3)


@given(tops=qkv_tops, seed=st.integers(0, 999), k=st.sampled_from([1, 2]), fused=st.booleans())
def test_coupled_penalty_of_qkv_equals_exact_sum_over_blocks_with_its_gradient(tops, seed, k, fused):
    dim = 6
    g = torch.Generator().manual_seed(seed)
    if fused:
        model = _FusedAttention(dim)
        qkv_w, qkv_b, out_w, out_b = model.qkv.weight, model.qkv.bias, model.proj.weight, model.proj.bias
    else:
        model = nn.MultiheadAttention(dim, 2, dtype=torch.float64)
        qkv_w, qkv_b = model.in_proj_weight, model.in_proj_bias
        out_w, out_b = model.out_proj.weight, model.out_proj.bias
    with torch.no_grad():
        qkv_w.copy_(_qkv_weight(dim, tops, seed))
        out_w.copy_(matrix_with_spectrum([1.7] + [0.5] * (dim - 1), dim, dim, seed=seed + 7))
        qkv_b.copy_(0.3 * torch.randn(3 * dim, generator=g, dtype=torch.float64))
        out_b.copy_(0.3 * torch.randn(dim, generator=g, dtype=torch.float64))
    roles = [(qkv_w, "qkv"), (qkv_b, "bias"), (out_w, "matrix"), (out_b, "bias")]
    # independent reference: exact σ1 of each block, autograd through the SVD, float64
    reference = [(p.detach().clone().requires_grad_(True), role) for p, role in roles]
    expected = _exact_penalty(reference, k)
    expected.backward()

    penalty = specopt.SpectralPenalty(model, k=k, init_iterations=300)
    got = penalty()
    assert got.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-6)
    got.backward()
    scale = 2 * k * max(max(tops), 1.7) ** (2 * k - 1)  # size of ∂R/∂σ: float32 σ̂ errors scale with it
    for (p, role), (ref, _) in zip(roles, reference):
        torch.testing.assert_close(p.grad / scale, ref.grad / scale, atol=2e-6, rtol=1e-4, msg=role)
    # each block has its own warm-started vectors: q, k and v top singular vectors
    u, v = penalty.vectors[qkv_w]
    assert u.shape == (3, dim) and v.shape == (3, dim)
    for j, block in enumerate(qkv_w.detach().chunk(3)):
        left, _, right = torch.linalg.svd(block)
        assert abs(torch.dot(u[j].double(), left[:, 0]).item()) == pytest.approx(1.0, abs=1e-5)
        assert abs(torch.dot(v[j].double(), right[0]).item()) == pytest.approx(1.0, abs=1e-5)


def test_the_stacked_qkv_matrix_would_be_a_different_term():
    """q, k and v each at σ1 = 1 owe nothing; their stack, read as one 3·dim × dim matrix, has σ1 > 1 and would be
    pulled down (shrinking each projection below 1) — why the qkv role regularizes the blocks one by one."""
    qkv = _qkv_weight(6, [1.0, 1.0, 1.0], seed=0)
    assert [torch.linalg.matrix_norm(b, ord=2).item() for b in qkv.chunk(3)] == pytest.approx([1.0] * 3)
    assert _exact_penalty([(qkv, "qkv")], 2).item() == pytest.approx(0.0, abs=1e-12)
    assert torch.linalg.matrix_norm(qkv, ord=2).item() > 1.1


def test_coupled_penalty_rejects_unknown_roles_and_restarts_vectors_of_another_shape():
    layer = nn.Linear(4, 6)
    groups = [{"params": [layer.weight], "role": "qkv"}]
    vectors = specopt.penalty.WeakTensorKeyDictionary()
    specopt.penalty._penalty(groups, 2, 1, 16, vectors)
    assert vectors[layer.weight][0].shape == (3, 2)
    as_matrix = specopt.penalty._penalty([{"params": [layer.weight], "role": "matrix"}], 2, 1, 300, vectors)
    exact = (torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2) ** 2 - 1) ** 2
    assert as_matrix.item() == pytest.approx(exact.item(), rel=1e-4)  # cached (3, ·) vectors not reused
    with pytest.raises(ValueError, match="unknown role"):
        specopt.spectral_penalty([{"params": [layer.weight], "role": "diagonal"}])


def test_spectral_norms_report_qkv_per_block():
    torch.manual_seed(0)
    model = nn.Sequential()
    model.attn = nn.MultiheadAttention(6, 2)
    model.fused = _FusedAttention(4).float()
    with torch.no_grad():
        model.attn.in_proj_weight.copy_(_qkv_weight(6, [2.0, 0.5, 1.3], 1).float())
        model.fused.qkv.weight.copy_(_qkv_weight(4, [0.7, 1.8, 3.0], 2).float())
    exact = specopt.spectral_norms(model)
    qkv = {"attn.in_proj_weight": model.attn.in_proj_weight, "fused.qkv.weight": model.fused.qkv.weight}
    assert list(exact) == [
        "attn.in_proj_weight[q]", "attn.in_proj_weight[k]", "attn.in_proj_weight[v]", "attn.out_proj.weight",
        "fused.qkv.weight[q]", "fused.qkv.weight[k]", "fused.qkv.weight[v]", "fused.proj.weight",
    ]
    for name, weight in qkv.items():
        blocks = weight.detach().double().chunk(3)
        for b, block in zip("qkv", blocks):
            assert exact[f"{name}[{b}]"].shape == ()
            assert exact[f"{name}[{b}]"].item() == pytest.approx(
                torch.linalg.matrix_norm(block, ord=2).item(), rel=1e-5)
    assert exact["attn.out_proj.weight"].item() == pytest.approx(
        torch.linalg.matrix_norm(model.attn.out_proj.weight.detach().double(), ord=2).item(), rel=1e-5)
    # from an optimizer's state (spectral_sigma of shape (3,) for a qkv tensor): lr 0, weights fixed
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=0.0, init_iterations=200)
    assert specopt.spectral_norms(opt) == {}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert opt.state[model.attn.in_proj_weight]["spectral_sigma"].shape == (3,)
    cheap = specopt.spectral_norms(opt)
    assert list(cheap) == list(exact)
    for name in exact:
        assert cheap[name].shape == ()
        assert cheap[name].item() <= exact[name].item() * (1 + 1e-6)
        assert cheap[name].item() == pytest.approx(exact[name].item(), rel=1e-4)
    held = {n: s.clone() for n, s in cheap.items()}
    with torch.no_grad():
        model.attn.in_proj_weight.mul_(2.0)
    opt.step()
    assert all(torch.equal(cheap[n], held[n]) for n in cheap)  # a report is a copy, not the live state
    assert specopt.spectral_norms(opt)["attn.in_proj_weight[q]"].item() == pytest.approx(4.0, rel=1e-3)


def _qkv_model(via_override: bool) -> tuple[nn.Module, list[dict]]:
    if via_override:
        model = nn.Sequential(nn.Linear(8, 24))
        return model, specopt.param_groups(model, roles={"*.weight": "qkv"})
    model = nn.Module()
    model.qkv = nn.Linear(8, 24)
    return model, specopt.param_groups(model)


@given(tops=qkv_tops, seed=st.integers(0, 999), k=st.sampled_from([1, 2, 4]), fraction=st.floats(1e-3, 1.0),
       via_override=st.booleans())
def test_spectral_adam_qkv_step_is_the_gradient_step_of_each_block(tops, seed, k, fraction, via_override):
    model, groups = _qkv_model(via_override)
    weight = next(p for p in model.parameters() if p.ndim == 2)
    assert groups[0]["roles"][0] == "qkv"
    with torch.no_grad():
        weight.copy_(_qkv_weight(8, tops, seed).float())
    w0 = weight.detach().double().clone()
    svds = [torch.linalg.svd(block) for block in w0.chunk(3)]
    c = [2 * k * s[0].item() ** (k - 1) * (s[0].item() ** k - 1) for _, s, _ in svds]
    lr = 1e-2
    # λ small enough that no block's gradient step crosses σ = 1 (not truncated): then the step is exact
    lam = fraction * min(abs(s[0].item() - 1) / (lr * abs(cj)) for (_, s, _), cj in zip(svds, c))
    opt = specopt.SpectralAdam(groups, lr=lr, strength=lam, k=k, init_iterations=200)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # Adam's update is 0: only the spectral step acts
    opt.step()
    expected = torch.cat([block - lr * lam * cj * torch.outer(left[:, 0], right[0])
                          for block, (left, _, right), cj in zip(w0.chunk(3), svds, c)])
    scale = max(max(tops), 1.0)
    torch.testing.assert_close(weight.detach().double(), expected, atol=2e-6 * scale, rtol=0)
    for j, (block, (_, s, _)) in enumerate(zip(weight.detach().double().chunk(3), svds)):
        # only the top direction moves: σ1 → σ1 − lr·λ·c, the others stay (the moved one may fall below them)
        moved = torch.cat([s[:1] - lr * lam * c[j], s[1:]]).sort(descending=True).values
        torch.testing.assert_close(torch.linalg.svdvals(block), moved, atol=1e-5, rtol=1e-5, msg=f"block {j}")


@given(tops=st.lists(st.floats(-1.5, 2.5), min_size=3, max_size=3), log_lr_strength=st.floats(-3, 2),
       k=st.sampled_from([1, 2, 4, 8]), seed=st.integers(0, 999), via_override=st.booleans())
def test_spectral_adam_large_qkv_step_lands_each_block_between_its_sigma_and_one(
        tops, log_lr_strength, k, seed, via_override):
    model, groups = _qkv_model(via_override)
    weight = next(p for p in model.parameters() if p.ndim == 2)
    with torch.no_grad():
        weight.copy_(_qkv_weight(8, [10.0**t for t in tops], seed).float())
    lr = 1e-3
    opt = specopt.SpectralAdam(groups, lr=lr, strength=10.0**log_lr_strength / lr, k=k, init_iterations=200)
    before = [torch.linalg.matrix_norm(b, ord=2).item() for b in weight.detach().double().chunk(3)]
    for step in range(3):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
        after = [torch.linalg.matrix_norm(b, ord=2).item() for b in weight.detach().double().chunk(3)]
        for j in range(3):
            _assert_between(after[j], before[j], 1.0, f"σ1 of block {'qkv'[j]} at step {step}")
        before = after
