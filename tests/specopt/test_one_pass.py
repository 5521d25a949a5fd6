"""SpectralAdam(one_pass=True): in a compiled step, Adam's update and the spectral step written as one expression
per tensor (specopt.functional.one_pass) take the step of the two halves (Adam, then the spectral step) up to float32
rounding; whatever it cannot write keeps the two halves exactly; σ1 still goes to 1 (torch.linalg); an eager step on a
CPU is one C++ loop per tensor (specopt.native) with the same numbers, and the two halves where it cannot be built.
Each test starts Dynamo afresh (compile_step compiles torch.optim's one step code object, which
keeps at most 8 graphs)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import specopt
from specopt import native


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 16), nn.LayerNorm(16), nn.ReLU(),
                         nn.Linear(16, 5))


def run(net: nn.Module, opt: torch.optim.Optimizer, steps: int, compiled: bool = False, seed: int = 1,
        native: bool = True) -> None:
    step = specopt.compile_step(opt, native=native) if compiled else opt.step
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
        run(b, ob, 3, compiled=True, native=False)  # (with native, compile_step would keep the C++ loop)
        assert largest_difference(a, b) < 1e-6
        return
    run(a, oa, 3, compiled=True)
    torch._dynamo.reset()
    run(b, ob, 3, compiled=True)
    assert largest_difference(a, b) == 0.0


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("kwargs, native_loop", [(dict(), True), (dict(native=False), False),
                                                 (dict(amsgrad=True), False)])
def test_compile_step_keeps_the_cpp_loop_while_it_takes_the_whole_step(kwargs, native_loop):
    """compile_step(SpectralAdam(one_pass=True, fused_spectral=True)) on a CPU compiles nothing while the C++ steady
    state takes every step (it is faster than the compiled step); native=False, or a group the loop cannot take
    (amsgrad), compiles; the numbers are the two halves' either way."""
    native_arg = {k: v for k, v in kwargs.items() if k == "native"}
    adam_args = {k: v for k, v in kwargs.items() if k != "native"}
    a, b = model(), model()
    oa = specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0, fused_spectral=True, **adam_args)
    ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, fused_spectral=True, one_pass=True,
                              **adam_args)
    run(a, oa, 4)
    before = graphs()
    run(b, ob, 4, compiled=True, **native_arg)
    assert (graphs() == before) is native_loop, graphs() - before
    if not native_arg:  # (with native=False the first, eager step still leaves a plan: unused)
        assert (getattr(ob, "_steady", None) is not None) is native_loop
    assert largest_difference(a, b) < 1e-6


def test_compile_steps_native_must_be_a_bool():
    with pytest.raises(ValueError, match="native must be True or False, got 'yes'"):
        specopt.compile_step(specopt.SpectralAdam(model().parameters(), one_pass=True), native="yes")


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


class Counting:
    """The compiled extension, counting the calls of each of its functions."""

    def __init__(self, ext):
        self.ext, self.calls = ext, {"step": 0, "steady": 0}

    def __getattr__(self, name):
        def call(*args):
            self.calls[name] += 1
            return getattr(self.ext, name)(*args)
        return call


@pytest.fixture
def counted(monkeypatch):
    ext = native.extension()
    assert ext is not None, "the C++ loop could not be built on this machine"
    counting = Counting(ext)
    monkeypatch.setattr(native, "_EXTENSION", counting)
    return counting.calls


@pytest.mark.parametrize("fused_spectral", [False, True])
@pytest.mark.parametrize("cls, kwargs", SETTINGS)
def test_an_eager_step_on_a_cpu_is_one_cpp_loop_with_the_two_halves_numbers(counted, cls, kwargs, fused_spectral):
    """specopt.native: every tensor of the model in one C++ loop per tensor (the fused order: after its first step,
    one call per group that also takes the estimate), the same parameters and state as the two halves to float32
    rounding, and each weight's version bumped as an in-place op bumps it."""
    a, b = model(), model()
    oa = cls(specopt.param_groups(a), lr=1e-2, strength=1.0, fused_spectral=fused_spectral, **kwargs)
    ob = cls(specopt.param_groups(b), lr=1e-2, strength=1.0, fused_spectral=fused_spectral, one_pass=True, **kwargs)
    run(a, oa, 4)
    versions = [p._version for p in b.parameters()]
    run(b, ob, 4)
    assert [p._version for p in b.parameters()] == [v + 4 for v in versions]
    assert counted == ({"step": 1, "steady": 3} if fused_spectral else {"step": 4, "steady": 0})
    assert largest_difference(a, b) < 1e-6
    for pa, pb in zip(a.parameters(), b.parameters()):
        sa, sb = oa.state[pa], ob.state[pb]
        assert sa.keys() == sb.keys() and float(sa["step"]) == float(sb["step"]) == 4
        for key in sa:
            assert torch.allclose(sa[key], sb[key], rtol=1e-4, atol=1e-5), key


def test_the_steady_state_gives_way_to_an_edited_weight_a_reloaded_state_and_a_new_group(counted):
    """A weight changed in place between steps (its version), a state replaced by load_state_dict, a missing
    gradient, a new group: each sends the step back to the general path (the fused order then re-estimates from the
    edited weight), and the numbers stay the two halves'."""
    a, b = model(), model()
    oa = specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0, fused_spectral=True)
    ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, fused_spectral=True, one_pass=True)
    run(a, oa, 2, seed=1)
    run(b, ob, 2, seed=1)
    with torch.no_grad():
        a[2].weight.mul_(3.0)
        b[2].weight.mul_(3.0)
    run(a, oa, 2, seed=2)
    run(b, ob, 2, seed=2)
    assert counted == {"step": 2, "steady": 2}  # steps 1 and 3 general, 2 and 4 steady
    oa.load_state_dict(oa.state_dict())
    ob.load_state_dict(ob.state_dict())
    run(a, oa, 2, seed=3)
    run(b, ob, 2, seed=3)
    assert counted == {"step": 3, "steady": 3}
    b[5].bias.grad = None
    a[5].bias.grad = None
    oa.step()
    ob.step()  # a parameter without a gradient: the general path, which leaves it alone
    assert counted == {"step": 4, "steady": 3}
    assert largest_difference(a, b) < 1e-6


def test_without_the_cpp_loop_an_eager_step_is_the_two_halves(monkeypatch):
    """Where the loop cannot be built (no compiler: torch's builder raises, with OpenMP and without), SpectralAdam
    (one_pass=True) warns once and steps as without it, bit for bit."""
    from torch.utils import cpp_extension

    def no_compiler(name, *args, **kwargs):
        raise RuntimeError(f"Error building extension '{name}': c++: command not found")

    monkeypatch.setattr(native, "_EXTENSION", None)
    monkeypatch.setattr(cpp_extension, "load_inline", no_compiler)
    a, b = model(), model()
    run(a, specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0, fused_spectral=True), 3)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        run(b, specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, fused_spectral=True,
                                    one_pass=True), 3)
    assert largest_difference(a, b) == 0.0


def wide_model() -> nn.Module:
    """Tensors above the loop's one-thread size (65,536 elements), odd row counts (the last row alone)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(700, 513), nn.ReLU(), nn.Linear(513, 301), nn.LayerNorm(301), nn.Linear(301, 10))


@pytest.mark.parametrize("threads", [1, 2])
def test_the_loop_shares_large_tensors_over_torchs_threads_with_the_two_halves_numbers(threads):
    """With torch.set_num_threads(n) each large tensor is split over n threads (a matrix's column sums per thread,
    added up after): parameters and the stored mat-vecs equal the two halves' to float32 rounding."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = wide_model(), wide_model()
        oa = specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0, fused_spectral=True)
        ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, fused_spectral=True,
                                  one_pass=True)
        run(a, oa, 5)
        run(b, ob, 5)
    finally:
        torch.set_num_threads(before)
    assert ob._steady is not None  # the last steps were the steady state
    assert largest_difference(a, b) < 1e-6
    for pa, pb in zip(a.parameters(), b.parameters()):
        for key in ("spectral_wv", "spectral_wtu"):
            if key in oa.state[pa]:
                assert torch.allclose(oa.state[pa][key], ob.state[pb][key], rtol=1e-5, atol=1e-5), key


def test_without_openmp_the_loop_is_built_for_one_thread(monkeypatch):
    """A compiler without OpenMP (Apple's clang): the build falls back to the same loop on one thread, quietly."""
    monkeypatch.setattr(native, "_EXTENSION", None)
    monkeypatch.setattr(native, "OPENMP", ["-fno-such-openmp-flag"])
    monkeypatch.setattr(native, "_machine", lambda: "testserial")  # (the real build's cache folder stays intact)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ext = native.extension()
    assert ext is not None and "_serial" in ext.__name__  # (torch appends _v1, _v2 to a rebuilt name)
    a, b = wide_model(), wide_model()
    run(a, specopt.SpectralAdam(specopt.param_groups(a), lr=1e-2, strength=1.0, fused_spectral=True), 3)
    ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-2, strength=1.0, fused_spectral=True, one_pass=True)
    run(b, ob, 3)
    assert ob._steady is not None and largest_difference(a, b) < 1e-6


def test_a_build_that_takes_a_while_says_so_once(monkeypatch, caplog):
    """A first step that builds the loop (about 30 s) logs one line on the "specopt" logger after BUILD_NOTE_AFTER
    seconds; one that finishes sooner (a cached build) says nothing."""
    import logging
    import time

    from torch.utils import cpp_extension

    real = cpp_extension.load_inline

    def slow(*args, **kwargs):  # the build as a cold cache makes it: slower than the note's delay
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(cpp_extension, "load_inline", slow)
    for delay, says in ((0.1, True), (600.0, False)):
        monkeypatch.setattr(native, "_EXTENSION", None)
        monkeypatch.setattr(native, "BUILD_NOTE_AFTER", delay)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="specopt"):
            assert native.extension() is not None
        notes = [r.getMessage() for r in caplog.records if r.name == "specopt"]
        assert notes == (["specopt: building SpectralAdam(one_pass=True)'s CPU loop (once per machine and torch "
                          "version, about 30 s)"] if says else []), notes


def test_loading_the_loop_again_leaves_its_flags_alone(monkeypatch):
    """torch's builder appends its libraries to the extra_ldflags list it is handed: handed OPENMP itself, a second
    load in one process built with changed flags (a rebuild, and a build folder every later process rebuilt)."""
    openmp, wide, flags = list(native.OPENMP), list(native.WIDE), list(native.FLAGS)
    for _ in range(2):
        monkeypatch.setattr(native, "_EXTENSION", None)
        assert native.extension() is not None
    assert (native.OPENMP, native.WIDE, native.FLAGS) == (openmp, wide, flags) == (["-fopenmp"], wide, flags)


ZEN4 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma avx512f avx512vl\n"
SKYLAKE_X = "vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 fma avx512f avx512vl\n"
ZEN3 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 fma\n"


@pytest.mark.parametrize("cpuinfo, machine, wide", [
    (ZEN4, "x86_64", True), (SKYLAKE_X, "x86_64", False), (ZEN3, "x86_64", False), ("", "aarch64", False),
    (ZEN4.replace("flags", "Features"), "aarch64", False)])
def test_the_loop_asks_for_512_bit_vectors_only_on_amd_cpus_with_avx512(monkeypatch, cpuinfo, machine, wide):
    """GCC on Intel keeps 256-bit vectors (older AVX-512 chips lower their clock); an ARM compiler does not know the
    x86 flag at all (its build would fail and the step would lose the loop)."""
    import platform

    monkeypatch.setattr(platform, "machine", lambda: machine)
    got = native.flags(cpuinfo)
    assert got[:len(native.FLAGS)] == native.FLAGS
    assert ("-mprefer-vector-width=512" in got) is wide


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=16))


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=5)


@pytest.mark.parametrize("build, steady", [(_resnet18, True), (_gpt2, False)])
def test_the_cpp_loop_on_third_party_models_takes_the_two_halves_step(build, steady):
    """torchvision's ResNet-18 (convolutions, BatchNorm scales and biases: every tensor in the loop, the steady
    state) and HF GPT-2 from a config (its fused c_attn keeps the two halves, the rest is in the loop): from the same
    weights and gradients, three eager steps of SpectralAdam(one_pass=True, fused_spectral=True) equal the two
    halves' to float32 rounding."""
    torch.manual_seed(0)
    a = build()
    b = copy.deepcopy(a)
    oa = specopt.SpectralAdam(specopt.param_groups(a), lr=1e-3, strength=1.0, fused_spectral=True)
    ob = specopt.SpectralAdam(specopt.param_groups(b), lr=1e-3, strength=1.0, fused_spectral=True, one_pass=True)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        for pa, pb in zip(a.parameters(), b.parameters()):
            pa.grad = torch.randn(pa.shape, generator=gen) * 1e-2
            pb.grad = pa.grad.clone()
        oa.step()
        ob.step()
    assert largest_difference(a, b) < 1e-6
    assert (ob._steady is not None) == steady
