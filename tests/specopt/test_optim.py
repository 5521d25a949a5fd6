"""Behaviour of SpectralAdam and Spectral(optimizer) as PyTorch optimizers."""

import copy
import io
import itertools
import pickle
import warnings

import pytest
import torch
from torch import nn

import specopt


def make_model(seed=0, layernorm=True):
    torch.manual_seed(seed)
    layers = [nn.Linear(10, 32)] + ([nn.LayerNorm(32)] if layernorm else []) + [nn.ReLU(), nn.Linear(32, 4)]
    return nn.Sequential(*layers)


def batch(step):
    g = torch.Generator().manual_seed(step)
    return torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)


def train(model, opt, steps, start=0, closure=False):
    for t in range(start, start + steps):
        x, y = batch(t)

        def loss_fn():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()


IMPLS = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
    "differentiable": {"differentiable": True},
    "tensor-lr": {"lr": torch.tensor(3e-3), "foreach": False},
    "tensor-betas": {"betas": (torch.tensor(0.8), torch.tensor(0.95)), "foreach": False},
}
ADAM_GRID = [
    dict(IMPLS[impl], weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx, eps=1e-6)
    for impl, wd, dec, ams, mx in itertools.product(sorted(IMPLS), (0.0, 0.1), (False, True), (False, True),
                                                    (False, True))
]


def _adam_run(make, kwargs, steps=20):
    """``steps`` steps of ``make(params, **kwargs)`` on a matrix and a bias whose gradient depends on the trajectory;
    returns the final parameters and, for ``differentiable``, the gradient of their sum w.r.t. the initial ones."""
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(5, 4, generator=g).requires_grad_(), torch.randn(5, generator=g).requires_grad_()]
    differentiable = kwargs.get("differentiable", False)
    params = [p.clone() for p in leaves] if differentiable else [nn.Parameter(p.detach().clone()) for p in leaves]
    opt = make(params, **{k: v.clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})
    for t in range(steps):
        noise = torch.Generator().manual_seed(100 + t)
        for p in params:
            p.grad = 0.3 * p.detach() + torch.randn(p.shape, generator=noise)
        opt.step()
    out = [p.detach().clone() for p in params]
    if differentiable:
        try:
            out += list(torch.autograd.grad(sum(p.sum() for p in params), leaves))
        except RuntimeError as err:  # torch 2.14's differentiable amsgrad: "modified by an inplace operation"
            out.append(str(err).split(":")[0])
    return out


def _equal(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) if torch.is_tensor(x) else x == y for x, y in zip(a, b))


@pytest.mark.parametrize("kwargs", ADAM_GRID, ids=lambda kw: ",".join(
    f"{k}={'T' if torch.is_tensor(v) or isinstance(v, tuple) else v}" for k, v in kw.items()))
def test_strength_zero_is_torch_adam_bit_for_bit_for_every_argument(kwargs):
    expected = _adam_run(torch.optim.Adam, kwargs)
    got = _adam_run(lambda ps, **kw: specopt.SpectralAdam(ps, strength=0.0, **kw), kwargs)
    assert _equal(expected, got)
    moved = _adam_run(lambda ps, **kw: specopt.SpectralAdam(ps, strength=1.0, **kw), kwargs)
    assert not torch.equal(moved[0], expected[0])  # the grid's runs do take the spectral step when λ > 0


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("weight_decay", [None, 0.1])
def test_spectral_adamw_at_strength_zero_is_torch_adamw_bit_for_bit(impl, weight_decay):
    kwargs = dict(IMPLS[impl], amsgrad=True) | ({} if weight_decay is None else {"weight_decay": weight_decay})
    expected = _adam_run(torch.optim.AdamW, kwargs)
    got = _adam_run(lambda ps, **kw: specopt.SpectralAdamW(ps, strength=0.0, **kw), kwargs)
    assert _equal(expected, got)
    adam = _adam_run(torch.optim.Adam, kwargs)
    assert not torch.equal(adam[0], expected[0])  # AdamW's default weight decay 1e-2 is decoupled, unlike Adam's


def test_positional_arguments_are_adams():
    """lr, betas, eps, weight_decay, amsgrad in Adam's positional order (the spectral settings are keyword-only)."""
    args = (1e-2, (0.8, 0.9), 1e-6, 0.1, True)
    expected = _adam_run(lambda ps: torch.optim.Adam(ps, *args), {})
    got = _adam_run(lambda ps: specopt.SpectralAdam(ps, *args, strength=0.0), {})
    assert _equal(expected, got)
    assert specopt.SpectralAdam([nn.Parameter(torch.ones(2, 2))], *args).defaults["amsgrad"] is True


def test_capturable_behaves_as_torch_adam_on_this_device():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = {"capturable": True, "weight_decay": 0.1}

    def run(make):
        try:
            return _adam_run(lambda ps, **kw: make([p.to(device).detach().requires_grad_() for p in ps], **kw),
                             kwargs), None
        except Exception as err:  # capturable Adam refuses CPU tensors
            return None, (type(err), str(err))

    expected, err_expected = run(torch.optim.Adam)
    got, err_got = run(lambda ps, **kw: specopt.SpectralAdam(ps, strength=0.0, **kw))
    assert err_got == err_expected
    if expected is not None:
        assert _equal(expected, got)


@pytest.mark.parametrize("make", [
    lambda ps, **kw: specopt.SpectralAdam(ps, **kw),
    lambda ps, **kw: specopt.Spectral(torch.optim.SGD(ps, lr=0.1), **kw),
    lambda ps, **kw: specopt.StackedSpectralAdam(ps, ["matrix"], **kw),
], ids=["SpectralAdam", "Spectral", "StackedSpectralAdam"])
def test_spectral_strength_is_a_deprecated_alias_of_strength(make, monkeypatch):
    monkeypatch.setattr(specopt.optim, "_WARNED_ALIASES", set())
    w = nn.Parameter(torch.ones(2, 3, 3))
    with pytest.warns(FutureWarning, match=r"spectral_strength=\.\.\.\) is deprecated; use strength="):
        opt = make([w], spectral_strength=0.5)
    stacked = isinstance(opt, specopt.StackedSpectralAdam)
    strength = opt.strength if stacked else opt.param_groups[0]["spectral_strength"]
    assert float(torch.as_tensor(strength).flatten()[0]) == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make([w], spectral_strength=0.5)  # once per class
        make([w], strength=0.5)
    with pytest.raises(ValueError, match="both strength= and its deprecated alias") as err:
        make([w], strength=0.5, spectral_strength=0.5)
    assert "\n" not in str(err.value)


def test_adam_update_is_torch_adam_when_no_role_is_regularized():
    a, b = make_model(), make_model()
    ref = torch.optim.Adam(a.parameters(), lr=1e-3)
    opt = specopt.SpectralAdam([{"params": b.parameters(), "role": "none"}], lr=1e-3, strength=1.0)
    train(a, ref, 50)
    train(b, opt, 50)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_spectral_step_changes_the_trajectory_and_pulls_sigma_toward_one():
    a, b = make_model(), make_model()
    with torch.no_grad():
        for m in (a[0], b[0]):
            m.weight.mul_(5.0)
    train(a, torch.optim.Adam(a.parameters(), lr=1e-3), 100)
    train(b, specopt.SpectralAdam(specopt.param_groups(b), lr=1e-3, strength=1.0), 100)
    sa = torch.linalg.matrix_norm(a[0].weight, ord=2)
    sb = torch.linalg.matrix_norm(b[0].weight, ord=2)
    assert abs(sb - 1) < abs(sa - 1)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda m: specopt.SpectralAdam(specopt.param_groups(m), lr=1e-3),
        lambda m: specopt.Spectral(torch.optim.SGD(specopt.param_groups(m), lr=0.05, momentum=0.9)),
        lambda m: specopt.Spectral(torch.optim.RMSprop(m.parameters(), lr=1e-3), strength=2.0),
    ],
    ids=["SpectralAdam", "Spectral(SGD)", "Spectral(RMSprop)"],
)
def test_checkpoint_restore_continue_equals_never_stopping(make_opt):
    m1 = make_model()
    o1 = make_opt(m1)
    train(m1, o1, 20)
    ckpt = _roundtrip({"model": m1.state_dict(), "opt": o1.state_dict()})
    assert any("spectral_u" in s for s in ckpt["opt"]["state"].values())
    train(m1, o1, 20, start=20)

    m2 = make_model(seed=123)
    o2 = make_opt(m2)
    m2.load_state_dict(ckpt["model"])
    o2.load_state_dict(ckpt["opt"])
    train(m2, o2, 20, start=20)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_power_iteration_vectors_stay_float32_for_bf16_parameters_across_checkpoints():
    model = make_model().to(torch.bfloat16)
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)
    x, y = batch(0)
    nn.functional.cross_entropy(model(x.bfloat16()).float(), y).backward()
    opt.step()
    state = opt.state[model[0].weight]
    assert state["spectral_u"].dtype == torch.float32 and state["spectral_v"].dtype == torch.float32
    opt2 = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)
    opt2.load_state_dict(_roundtrip(opt.state_dict()))
    restored = opt2.state[model[0].weight]
    assert restored["spectral_u"].dtype == torch.float32
    assert torch.equal(restored["spectral_u"], state["spectral_u"])
    assert restored["exp_avg"].dtype == torch.bfloat16  # Adam's own state follows the parameter as in torch
    assert state["spectral_residual"].dtype == torch.float32 and state["spectral_residual"].shape == (32, 10)
    assert restored["spectral_residual"].dtype == torch.float32
    assert torch.equal(restored["spectral_residual"], state["spectral_residual"])


def _pure_spectral_run(make, dtype, steps=200):
    """``steps`` spectral steps (zero loss gradients) at lr 1e-2 and the default strength on a Linear (σ1 = 3, bias
    of ones) and a LayerNorm (γ = 3) of ``dtype``: each step moves a weight by ~2e-5, far below bf16's resolution
    (≈ 4e-4 at 0.1), but 200 steps move σ1 and the bias norm by ~0.1. Returns (model, optimizer, start weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.LayerNorm(32))
    with torch.no_grad():
        model[0].weight.mul_(3.0 / torch.linalg.matrix_norm(model[0].weight, ord=2))
        model[0].bias.fill_(1.0)
        model[1].weight.fill_(3.0)
    model = model.to(dtype)
    start = [p.detach().float().clone() for p in model.parameters()]
    opt = make(specopt.param_groups(model))
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step()
    return model, opt, start


def _moved(model):
    w, b = model[0].weight.detach().double(), model[0].bias.detach().double()
    return torch.stack([3.0 - torch.linalg.matrix_norm(w, ord=2), 32**0.5 - b.norm()])


@pytest.mark.parametrize("name, dtype", [("SpectralAdam", torch.bfloat16), ("Spectral(SGD)", torch.bfloat16),
                                         ("Spectral(SGD)", torch.float16)])
def test_low_precision_weights_take_the_spectral_step_as_float32_does(name, dtype):
    """Rounded into the weight at every step, the spectral step of a bf16 layer was mostly lost (σ1 moved 0.04× as
    far as in float32). It is accumulated in a float32 residual (``spectral_residual``) instead."""
    make = {"SpectralAdam": lambda ps: specopt.SpectralAdam(ps, lr=1e-2),
            "Spectral(SGD)": lambda ps: specopt.Spectral(torch.optim.SGD(ps, lr=1e-2))}[name]
    ref_model, _, ref_start = _pure_spectral_run(make, torch.float32)
    model, opt, start = _pure_spectral_run(make, dtype)
    reference = _moved(ref_model)
    assert (reference > 0.05).all()
    torch.testing.assert_close(_moved(model), reference, rtol=0.03, atol=0.0)  # σ1 and ‖b‖ moved as in float32
    for p, q, p0, q0 in zip(model.parameters(), ref_model.parameters(), start, ref_start):
        # the step taken, weight + residual (the float32 value the weight rounds), against float32's own step
        step, ref_step = p.detach().float() + opt.state[p]["spectral_residual"] - p0, q.detach() - q0
        if ref_step.norm() == 0:  # the LayerNorm's zero shift: a stationary point of ‖b‖^2k
            assert torch.equal(step, ref_step)
        else:
            assert (step - ref_step).norm() / ref_step.norm() < 0.03, p.shape


def test_lr_scheduler_drives_the_wrapper_and_scales_the_spectral_step():
    model = make_model()
    opt = specopt.Spectral(torch.optim.SGD(model.parameters(), lr=0.1))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0 if epoch >= 1 else 1.0)
    train(model, opt, 1)
    sched.step()
    assert opt.optimizer.param_groups[0]["lr"] == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, 1, start=1)  # lr 0: neither the base nor the spectral step may move anything
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)


def test_grad_scaler_steps_like_unscaled_training_and_skips_inf_steps():
    a, b = make_model(), make_model()
    oa = specopt.Spectral(torch.optim.SGD(a.parameters(), lr=0.05))
    ob = specopt.Spectral(torch.optim.SGD(b.parameters(), lr=0.05))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = batch(0)
    nn.functional.cross_entropy(a(x), y).backward()
    oa.step()
    scaler.scale(nn.functional.cross_entropy(b(x), y)).backward()
    scaler.step(ob)
    scaler.update()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
    before = [p.detach().clone() for p in b.parameters()]
    ob.zero_grad()
    scaler.scale(nn.functional.cross_entropy(b(x), y) * float("inf")).backward()
    scaler.step(ob)  # inf gradients: GradScaler skips the whole step, spectral part included
    scaler.update()
    for p, q in zip(before, b.parameters()):
        assert torch.equal(p, q)


def test_found_inf_from_grad_scaler_skips_the_spectral_step_of_fused_adam():
    model = make_model()
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cpu")
    x, y = batch(0)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    scaler.step(opt)
    scaler.update()
    before = [p.detach().clone() for p in model.parameters()]
    spectral = {(i, key): val.clone() for i, p in enumerate(model.parameters())
                for key, val in opt.state[p].items() if key.startswith("spectral_")}
    assert {key for _, key in spectral} >= {"spectral_u", "spectral_v", "spectral_sigma"}
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(model(x), y) * float("inf")).backward()
    scaler.step(opt)
    for p, q in zip(before, model.parameters()):
        assert torch.equal(p, q)
    params = list(model.parameters())
    for (i, key), val in spectral.items():  # the skipped step left the power-iteration state alone too
        assert torch.equal(opt.state[params[i]][key], val), key


@pytest.mark.parametrize("wrap", [True, False])
def test_step_with_closure_returns_the_loss_and_equals_step_without(wrap):
    def make(m):
        if wrap:
            return specopt.Spectral(torch.optim.AdamW(specopt.param_groups(m), lr=1e-3))
        return specopt.SpectralAdam(specopt.param_groups(m), lr=1e-3)

    a, b = make_model(), make_model()
    oa, ob = make(a), make(b)
    train(a, oa, 5)
    train(b, ob, 5, closure=True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    x, y = batch(99)
    expected = nn.functional.cross_entropy(b(x), y).item()

    def closure():
        ob.zero_grad()
        loss = nn.functional.cross_entropy(b(x), y)
        loss.backward()
        return loss

    assert ob.step(closure).item() == pytest.approx(expected)


def test_lbfgs_is_rejected_with_a_pointer_to_the_coupled_form():
    with pytest.raises(TypeError, match="spectral_penalty"):
        specopt.Spectral(torch.optim.LBFGS(make_model().parameters()))


@pytest.mark.parametrize("wrapper", [True, False])
def test_param_group_added_later_is_regularized_with_defaults(wrapper):
    base, extra = nn.Linear(4, 4), nn.Linear(4, 3)
    with torch.no_grad():
        extra.weight.mul_(10)
    if wrapper:
        opt = specopt.Spectral(torch.optim.SGD(base.parameters(), lr=0.01), strength=0.5)
    else:
        opt = specopt.SpectralAdam(base.parameters(), lr=0.01, strength=0.5)
    opt.add_param_group({"params": [extra.weight], "lr": 0.01})
    group = opt.param_groups[-1]
    assert group["spectral_strength"] == 0.5 and group["k"] == 2 and group["role"] == "auto"
    sigma = torch.linalg.matrix_norm(extra.weight, ord=2).item()
    extra.weight.grad = torch.zeros_like(extra.weight)
    opt.step()
    assert torch.linalg.matrix_norm(extra.weight, ord=2).item() < sigma


def test_parameters_without_grad_are_skipped():
    model = make_model()
    opt = specopt.SpectralAdam(specopt.param_groups(model), lr=1e-3)
    frozen = model[0].weight
    before = frozen.detach().clone()
    model[3].weight.grad = torch.randn_like(model[3].weight)
    opt.step()
    assert torch.equal(frozen, before)
    assert frozen not in opt.state or "spectral_u" not in opt.state[frozen]


def test_nan_and_inf_never_poison_the_stored_vectors():
    layer = nn.Linear(6, 5)
    opt = specopt.Spectral(torch.optim.SGD([layer.weight], lr=0.01))
    layer.weight.grad = torch.full_like(layer.weight, float("nan"))
    opt.step()  # ∇R is taken at the finite pre-step weights; SGD then makes them NaN
    assert torch.isnan(layer.weight).all()
    st = opt.state[layer.weight]
    u, v = st["spectral_u"].clone(), st["spectral_v"].clone()
    assert torch.isfinite(u).all() and torch.isfinite(v).all()
    for bad in (float("nan"), float("inf")):
        with torch.no_grad():
            layer.weight.fill_(bad)
        layer.weight.grad = torch.zeros_like(layer.weight)
        opt.step()  # non-finite weights: the spectral step is skipped and the vectors kept
        assert torch.equal(st["spectral_u"], u) and torch.equal(st["spectral_v"], v)
        assert st["spectral_sigma"].item() == 0.0
    with torch.no_grad():
        layer.weight.copy_(torch.randn(5, 6))  # recovers as soon as the weights are finite again
    opt.step()
    sigma = opt.state[layer.weight]["spectral_sigma"]
    assert torch.isfinite(sigma) and sigma > 0


def test_zero_matrix_one_by_one_and_empty_parameters():
    zero = nn.Parameter(torch.zeros(4, 3))
    one = nn.Parameter(torch.tensor([[3.0]]))
    empty = nn.Parameter(torch.zeros(0, 5))
    opt = specopt.SpectralAdam([zero, one, empty], lr=1e-2, strength=1.0)
    for p in (zero, one, empty):
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(zero, torch.zeros(4, 3))  # σ=0 is a stationary point of (σ²-1)²
    assert all(torch.isfinite(t).all() for t in opt.state[zero].values())
    # 1×1: σ1 = |w| and the step is lr·λ·2k·w(w²-1) exactly
    assert one.item() == pytest.approx(3.0 - 1e-2 * 4 * 3.0 * 8.0, rel=1e-5)
    assert empty.shape == (0, 5)


def test_sparse_gradients_raise_a_clear_error():
    emb = nn.Embedding(10, 4, sparse=True)
    opt = specopt.Spectral(torch.optim.SparseAdam(emb.parameters(), lr=1e-3))
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strength": -1.0}, "strength must be"),
        ({"strength": float("nan")}, "strength must be"),
        ({"k": 0.5}, "k must be"),
        ({"power_iterations": 0}, "power_iterations must be"),
    ],
)
def test_invalid_hyperparameters_give_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        specopt.SpectralAdam(nn.Linear(2, 2).parameters(), **kwargs)
    assert "\n" not in str(err.value)


def test_unknown_role_and_wrong_wrap_target_are_rejected():
    with pytest.raises(ValueError, match="unknown role 'weights'"):
        specopt.SpectralAdam([{"params": nn.Linear(2, 2).parameters(), "role": "weights"}])
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        specopt.Spectral(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="already takes the spectral step"):
        specopt.Spectral(specopt.SpectralAdam(nn.Linear(2, 2).parameters()))


def test_step_hooks_run_once_per_step():
    torch.optim.Adam(nn.Linear(2, 2).parameters())  # makes Adam.step the hooked wrapper
    model = make_model()
    for opt in (specopt.SpectralAdam(model.parameters()), specopt.Spectral(torch.optim.Adam(model.parameters()))):
        calls = []
        opt.register_step_post_hook(lambda *a: calls.append(1))
        train(model, opt, 1)
        assert len(calls) == 1


def test_optimizer_can_be_deep_copied_and_pickled():
    model = make_model()
    for opt in (specopt.SpectralAdam(model.parameters()), specopt.Spectral(torch.optim.SGD(model.parameters(), lr=0.1))):
        train(model, opt, 2)
        clone = copy.deepcopy(opt)
        assert len(clone.state_dict()["state"]) == len(opt.state_dict()["state"])


def _scaled_layer(scale: float = 5.0) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    with torch.no_grad():
        layer.weight.mul_(scale)
    return layer


@pytest.mark.parametrize("make", [
    lambda ps: specopt.SpectralAdam(ps, lr=1e-2),
    lambda ps: specopt.Spectral(torch.optim.SGD(ps, lr=1e-2)),
], ids=["SpectralAdam", "Spectral(SGD)"])
@pytest.mark.parametrize("copy_with", ["deepcopy", "pickle"])
def test_a_copied_optimizer_still_takes_the_spectral_step_once(make, copy_with):
    """torch.optim drops hooks when pickling; the spectral step must come back, once (not twice after a load)."""
    layer = _scaled_layer()
    opt = make([layer.weight])
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    clone = copy.deepcopy(opt) if copy_with == "deepcopy" else pickle.loads(pickle.dumps(opt))
    w = clone.param_groups[0]["params"][0]
    w.grad = torch.zeros_like(w)
    reference = _scaled_layer()
    ref_opt = make([reference.weight])
    reference.weight.grad = torch.zeros_like(reference.weight)
    ref_opt.step()
    ref_opt.step()  # two steps uninterrupted = one step, copy, one more step
    before = w.detach().clone()
    clone.step()
    assert not torch.equal(w.detach(), before)  # the copy took a spectral step (the base update is 0)
    torch.testing.assert_close(w.detach(), reference.weight.detach(), rtol=1e-6, atol=1e-7)


def test_hooks_registered_on_the_wrapper_get_the_wrapper_and_see_the_final_weights():
    layer = _scaled_layer()
    opt = specopt.Spectral(torch.optim.SGD([layer.weight], lr=1e-2))
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", o, layer.weight.detach().clone())))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", o, layer.weight.detach().clone())))
    before = layer.weight.detach().clone()
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    assert [s[0] for s in seen] == ["pre", "post"] and all(s[1] is opt for s in seen)
    assert torch.equal(seen[0][2], before)
    assert torch.equal(seen[1][2], layer.weight.detach()) and not torch.equal(seen[1][2], before)


# --- complex parameters: refused in one line unless their role is none -------------------------------------------


class _ComplexNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(6, 8, dtype=torch.cfloat)  # a complex matrix and a complex bias
        self.out = nn.Linear(8, 3)


COMPLEX_USERS = {
    "SpectralAdam": lambda groups: specopt.SpectralAdam(groups, lr=1e-3),
    "SpectralAdamW": lambda groups: specopt.SpectralAdamW(groups, lr=1e-3),
    "Spectral(SGD)": lambda groups: specopt.Spectral(torch.optim.SGD(groups, lr=0.1)),
    "spectral_penalty": lambda groups: specopt.spectral_penalty(groups),
    "SpectralPenalty": lambda groups: specopt.SpectralPenalty(groups)(),
}


@pytest.mark.parametrize("use", sorted(COMPLEX_USERS))
@pytest.mark.parametrize("name, role", [("fc.weight", "matrix"), ("fc.bias", "bias"), ("fc.bias", "scale")])
def test_a_complex_tensor_to_regularize_is_refused_in_one_line_that_names_it(use, name, role):
    model = _ComplexNet()
    others = {n: "none" for n in ("fc.weight", "fc.bias") if n != name}
    groups = specopt.param_groups(model, roles={**others, name: role})
    with pytest.raises(ValueError) as err:
        COMPLEX_USERS[use](groups)
    assert str(err.value) == (f"specopt does not regularize complex tensors: '{name}' is complex64 with role '{role}'; "
                              f"give it role 'none' (specopt.param_groups(model, roles={{'{name}': 'none'}}))")


@pytest.mark.parametrize("make", [
    lambda params: specopt.SpectralAdam(params, lr=1e-3, strength=1.0),
    lambda params: specopt.Spectral(torch.optim.SGD(params, lr=0.1), strength=1.0),
], ids=["SpectralAdam", "Spectral(SGD)"])
def test_complex_tensors_are_refused_without_names_and_when_given_a_role_after_construction(make):
    w = nn.Parameter(torch.randn(4, 3, dtype=torch.cfloat))
    with pytest.raises(ValueError, match="parameter 0 of its group is complex64 with role 'matrix'"):
        make([w])  # plain parameters: "auto" makes a 2-D tensor a matrix
    b = nn.Parameter(torch.randn(4, dtype=torch.cfloat))
    opt = make([b])  # "auto" leaves a 1-D tensor alone
    opt.param_groups[0]["role"] = "bias"
    b.grad = torch.zeros_like(b)
    with pytest.raises(ValueError, match="parameter 0 of its group is complex64 with role 'bias'"):
        opt.step()
    with pytest.raises(ValueError, match="complex64 with role 'matrix'"):
        specopt.StackedSpectralAdam([nn.Parameter(torch.randn(2, 4, 3, dtype=torch.cfloat))], ["matrix"])


def test_complex_tensors_with_role_none_train_as_the_base_optimizer_does():
    a, b = _ComplexNet(), _ComplexNet()
    roles = {"fc.*": "none"}
    opt_a = specopt.SpectralAdam(specopt.param_groups(a, roles=roles), lr=1e-2, strength=1.0, foreach=False)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, foreach=False)
    for t in range(5):
        g = torch.Generator().manual_seed(t)
        x, z = torch.randn(4, 6, dtype=torch.cfloat, generator=g), torch.randn(4, 8, generator=g)
        for model, opt in ((a, opt_a), (b, opt_b)):  # two losses: fc's gradient does not depend on out
            opt.zero_grad()
            (model.fc(x).abs().square().sum() + model.out(z).square().sum()).backward()
            opt.step()
    assert torch.equal(a.fc.weight, b.fc.weight) and torch.equal(a.fc.bias, b.fc.bias)
    assert not torch.equal(a.out.weight, b.out.weight)  # the real layer is regularized


def test_spectral_norms_of_a_complex_matrix_is_its_true_sigma1():
    model = _ComplexNet()
    with torch.no_grad():
        model.fc.weight.imag.mul_(5.0)
    sigma = specopt.spectral_norms(model)["fc.weight"]
    true = torch.linalg.matrix_norm(model.fc.weight.detach(), ord=2)
    assert sigma.dtype == torch.float32 and sigma.shape == ()
    torch.testing.assert_close(sigma, true)
    assert sigma > 2 * torch.linalg.matrix_norm(model.fc.weight.detach().real, ord=2)  # not Re W's σ1
    w = torch.randn(6, 4, dtype=torch.cdouble)  # a complex qkv: each row block's true σ1
    norms = specopt.spectral_norms([{"params": [w], "param_names": ["qkv"], "role": "qkv"}])
    blocks = torch.linalg.matrix_norm(w.reshape(3, 2, 4), ord=2).float()
    torch.testing.assert_close(torch.stack([norms[f"qkv[{j}]"] for j in "qkv"]), blocks)


# --- migrating a checkpoint of another optimizer into a specopt optimizer -----------------------------------------


def _migrate(make_base, make_specopt, moments):
    """Train ``make_base(model.parameters())`` (a torch optimizer), save its state, load it into
    ``make_specopt(param_groups(model, strength=0.5))``; return (model, specopt optimizer, saved state, the roles
    ``describe`` showed before loading, a reference specopt optimizer on a copy of the model given the saved
    ``moments`` directly, its model, a plain base optimizer on another copy loaded with the saved state, its model)."""
    model = make_model()
    base = make_base(model.parameters())
    train(model, base, 5)
    saved = _roundtrip(base.state_dict())
    ref_model, base_model = copy.deepcopy(model), copy.deepcopy(model)
    opt = make_specopt(specopt.param_groups(model, strength=0.5))
    before = specopt.describe(opt)
    opt.load_state_dict(copy.deepcopy(saved))  # load_state_dict keeps the tensors it is given
    ref = make_specopt(specopt.param_groups(ref_model, strength=0.5))
    for i, p in enumerate(ref_model.parameters()):
        ref.state[p] = {key: saved["state"][i][key].clone() for key in moments}
    plain = make_base(base_model.parameters())
    plain.load_state_dict(copy.deepcopy(saved))
    return model, opt, saved, before, ref, ref_model, plain, base_model


MIGRATIONS = {
    "Adam -> SpectralAdam": (lambda ps: torch.optim.Adam(ps, lr=1e-2),
                             lambda groups: specopt.SpectralAdam(groups, lr=1e-2), ("step", "exp_avg", "exp_avg_sq")),
    "SGD -> Spectral(SGD)": (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
                             lambda groups: specopt.Spectral(torch.optim.SGD(groups, lr=0.05, momentum=0.9)),
                             ("momentum_buffer",)),
}


@pytest.mark.parametrize("migration", sorted(MIGRATIONS))
def test_loading_another_optimizers_checkpoint_keeps_the_roles_and_settings_and_loads_the_moments(migration):
    make_base, make_specopt, moments = MIGRATIONS[migration]
    model, opt, saved, before, ref, ref_model, _, _ = _migrate(make_base, make_specopt, moments)
    assert "bias" in before and "scale" in before  # the LayerNorm and the Linear biases
    assert specopt.describe(opt) == before
    assert all(g["spectral_strength"] == 0.5 and g["param_names"] for g in opt.param_groups)
    for i, p in enumerate(model.parameters()):
        st = opt.state[p]
        assert not any(key.startswith("spectral_") for key in st)  # the spectral state starts fresh
        for key in moments:
            assert torch.equal(st[key], saved["state"][i][key])
    train(model, opt, 3, start=5)
    train(ref_model, ref, 3, start=5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("migration", sorted(MIGRATIONS))
def test_after_loading_another_optimizers_checkpoint_biases_and_scales_take_the_spectral_step(migration):
    make_base, make_specopt, moments = MIGRATIONS[migration]
    model, opt, _, _, _, _, plain, base_model = _migrate(make_base, make_specopt, moments)
    lr = opt.param_groups[0]["lr"]
    pre = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, opt, 1, start=5)
    train(base_model, plain, 1, start=5)  # the base optimizer's own step from the same state
    base = dict(base_model.named_parameters())
    k, strength = 2, 0.5
    for name in ("0.bias", "3.bias"):  # b ← base(b) − ηλ·2k‖b‖^{2k−2}·b
        b = pre[name]
        expected = base[name] - lr * strength * 2 * k * b.norm() ** (2 * k - 2) * b
        torch.testing.assert_close(dict(model.named_parameters())[name], expected, rtol=1e-6, atol=1e-8)
    gamma = pre["1.weight"]  # γ ← base(γ) − ηλ·2(γ − 1)
    torch.testing.assert_close(model[1].weight, base["1.weight"] - lr * strength * 2 * (gamma - 1), rtol=1e-6,
                               atol=1e-8)
    assert not torch.equal(model[1].bias, base["1.bias"])
