"""torch.compile of the optimizer step: one graph for SpectralAdam, the eager result, no recompiles per step."""

import warnings

import pytest
import torch
from torch import nn

import specopt


def make_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 24), nn.LayerNorm(24), nn.ReLU(), nn.Linear(24, 4))
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # σ1 ≈ 3: a visible pull (not truncated: a truncated landing on σ = 1 makes the
        # next top direction a choice between near-equal values that rounding decides)
    return model


def train(model, step, steps):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        step()


COMPILERS = {
    "torch.compile": lambda opt: torch.compile(opt.step, fullgraph=isinstance(opt, specopt.SpectralAdam)),
    "specopt.compile_step": specopt.compile_step,  # the same, with Inductor options (specopt.COMPILE_OPTIONS)
}


@pytest.mark.parametrize("how", sorted(COMPILERS))
def test_compiled_spectral_adam_step_is_one_graph_and_equals_the_eager_step(how):
    torch._dynamo.reset()
    eager, compiled = make_model(), make_model()
    opt_e = specopt.SpectralAdam(specopt.param_groups(eager), lr=1e-2)
    opt_c = specopt.SpectralAdam(specopt.param_groups(compiled), lr=1e-2)
    train(eager, opt_e.step, 6)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    train(compiled, COMPILERS[how](opt_c), 6)
    # the first step (fresh state) and the second (warm state) compile; later steps reuse the second graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames <= 2
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    for p in eager.parameters():
        for key in ("spectral_u", "spectral_v", "spectral_sigma"):
            if key in opt_e.state[p]:
                torch.testing.assert_close(opt_c.state[dict(zip(eager.parameters(), compiled.parameters()))[p]][key],
                                           opt_e.state[p][key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("how", sorted(COMPILERS))
def test_compiled_wrapper_step_equals_the_eager_step_and_breaks_only_where_torch_optim_does(how):
    """``Spectral(SGD)``: SGD.step itself graph-breaks (torch.optim's ``_use_grad_for_differentiable``, twice, on
    purpose), so fullgraph=True is impossible for any wrapped torch.optim optimizer; specopt adds no break."""
    torch._dynamo.reset()
    eager, compiled = make_model(), make_model()
    opt_e = specopt.Spectral(torch.optim.SGD(specopt.param_groups(eager), lr=1e-2, momentum=0.9))
    opt_c = specopt.Spectral(torch.optim.SGD(specopt.param_groups(compiled), lr=1e-2, momentum=0.9))
    train(eager, opt_e.step, 5)
    train(compiled, COMPILERS[how](opt_c), 5)
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    explanation = torch._dynamo.explain(opt_c.step)()
    sources = {frame.filename.replace("\\", "/").rsplit("/", 2)[-2:][0] + "/" + frame.filename.rsplit("/", 1)[-1]
               for reason in explanation.break_reasons for frame in reason.user_stack[-1:]}
    assert sources <= {"optim/optimizer.py"}, sources


def test_compile_step_takes_a_mode_with_its_options():
    """torch.compile refuses ``mode`` and ``options`` together; compile_step expands the mode into options."""
    opt = specopt.SpectralAdam(specopt.param_groups(make_model()), lr=1e-2)
    for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
        assert callable(specopt.compile_step(opt, mode=mode, options={"realize_opcount_threshold": 8}))


class GraphCounter:
    """A ``torch.compile`` backend that runs each graph eagerly and counts them (Dynamo's graphs, no Inductor). It
    takes no ``options``: ``compile_step`` gives its Inductor options to Inductor only."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def scaled_linear():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    with torch.no_grad():
        layer.weight.mul_(3.0)
    return layer


def loop(layer, opt, step, make_scheduler, when, steps=8):
    """A training loop as people write it, with the scheduler made before or after ``compile_step``; returns the
    number of graphs compiled after each step (compile_step runs the first step eagerly)."""
    scheduler = make_scheduler(opt) if when == "before" else None
    step = step(opt)
    scheduler = scheduler or make_scheduler(opt)
    g = torch.Generator().manual_seed(1)
    counts = []
    for _ in range(steps):
        loss = layer(torch.randn(5, 6, generator=g)).square().mean()
        loss.backward()
        step()
        opt.zero_grad()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(loss.item())
        else:
            scheduler.step()
        counts.append(getattr(step, "counter", None) and step.counter.graphs)
    return counts


SCHEDULERS = {
    "LambdaLR": lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.8**epoch),
    "OneCycleLR": lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=10),
    "CosineAnnealingLR": lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4),
    "ReduceLROnPlateau": lambda opt: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0),
}


def counted_compile_step(opt):
    counter = GraphCounter()
    step = specopt.compile_step(opt, backend=counter)
    step.counter = counter
    return step


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_compile_step_with_an_lr_scheduler_made_before_or_after_it_equals_eager_warns_nothing_and_never_recompiles(
        scheduler, when):
    """The scheduler used to wrap ``opt.step`` in lr_scheduler.py (which Dynamo refuses to trace: ``Unsupported``
    under fullgraph), or, made after, to warn that ``lr_scheduler.step()`` came before ``optimizer.step()``."""
    torch._dynamo.reset()
    eager, compiled = scaled_linear(), scaled_linear()
    opt_e = specopt.SpectralAdam(specopt.param_groups(eager), lr=0.05, strength=1.0)
    opt_c = specopt.SpectralAdam(specopt.param_groups(compiled), lr=0.05, strength=1.0)
    loop(eager, opt_e, lambda opt: lambda: opt.step(), SCHEDULERS[scheduler], when)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = loop(compiled, opt_c, counted_compile_step, SCHEDULERS[scheduler], when)
    assert [str(w.message) for w in caught] == []
    # the fresh state, the warm state, and at most one more where the lr first changes (Dynamo's automatic dynamic:
    # a float first specialized, then a symbol); never one per step or per lr value
    assert graphs[1] <= 2 and graphs[-1] <= 3, graphs
    assert [g["lr"] for g in opt_c.param_groups] == [g["lr"] for g in opt_e.param_groups]
    assert opt_c.param_groups[0]["lr"] != 0.05  # the schedule did move the lr
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)  # float32 vs eager float64 scalars


BASES = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    "AdamW": lambda ps: torch.optim.AdamW(ps, lr=0.05),
    "RMSprop": lambda ps: torch.optim.RMSprop(ps, lr=0.01),
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_compiled_wrapper_step_does_not_recompile_per_step(base):
    """``Spectral(SGD)`` used to compile a new graph every step (12 in 14, up to the recompile limit): the step
    pre-hook took the optimizer (the hook's ``args[0]``) for a closure, so the post-hook re-read every ``.grad``,
    which Dynamo guards by identity, and each step's fresh gradient failed the guard."""
    torch._dynamo.reset()
    eager, compiled = scaled_linear(), scaled_linear()
    opt_e = specopt.Spectral(BASES[base](specopt.param_groups(eager)), strength=1.0)
    opt_c = specopt.Spectral(BASES[base](specopt.param_groups(compiled)), strength=1.0)
    loop(eager, opt_e, lambda opt: lambda: opt.step(), SCHEDULERS["LambdaLR"], "before", steps=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphs = loop(compiled, opt_c, counted_compile_step, SCHEDULERS["LambdaLR"], "before", steps=10)
    assert [str(w.message) for w in caught] == []
    # compile_step runs the first step eagerly; the next two compile each segment (the warm state with the lr a
    # constant, then a symbol once it has changed: Dynamo's automatic dynamic); the lr changes every step
    assert graphs[0] == 0 and graphs[-1] == graphs[2] <= 6, graphs
    for p, q in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)  # float32 vs eager float64 scalars
